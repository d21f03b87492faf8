// Pointwise math shared by the cells. All fp32; precision is chosen for <=1e-4 relative error
// against a float64 reference in fp32 runs, so no tanh.approx (2^-11 relative error).
#pragma once

namespace flashrnn {

__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + __expf(-x)); }

// log(sigmoid(x)) without overflow: min(x, 0) - log1p(exp(-|x|)).
__device__ __forceinline__ float log_sigmoid(float x) {
  return fminf(x, 0.f) - log1pf(__expf(-fabsf(x)));
}

}  // namespace flashrnn
