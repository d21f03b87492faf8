// Pointwise math shared by the cells. All fp32 and branch-free: ex2.approx-based exponentials
// and fast reciprocals (relative error ~1e-6, well inside the 1e-4 fp32 tolerance; tanhf and
// IEEE reciprocals cost 3-4x the instructions in a step that is issue-bound).
#pragma once

namespace flashrnn {

__device__ __forceinline__ float fast_rcp(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;  // rcp(inf) = 0, rcp(0) = inf
}

__device__ __forceinline__ float sigmoid(float x) { return fast_rcp(1.f + __expf(-x)); }

// tanh(x) = 1 - 2 / (1 + e^{2x}); saturates to +-1 without overflow trouble.
__device__ __forceinline__ float tanh_(float x) { return 1.f - 2.f * fast_rcp(1.f + __expf(2.f * x)); }

// log(sigmoid(x)) without overflow: min(x, 0) - log1p(exp(-|x|)).
__device__ __forceinline__ float log_sigmoid(float x) {
  return fminf(x, 0.f) - log1pf(__expf(-fabsf(x)));
}

}  // namespace flashrnn
