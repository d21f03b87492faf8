// Pointwise math shared by the cells, as two policies the kernels pick by dtype. Both are
// branch-free: the fused step is issue-bound (ncu, H100: ~440 instructions per warp per step,
// stalled mostly on dependent-latency), so every instruction of the cell counts.
//   PreciseMath (fp32): ex2.approx exponentials and rcp.approx, relative error ~1e-6.
//   FastMath (bf16/fp16): tanh.approx (relative error 2^-11, below the 2^-8 / 2^-11 resolution
//   the states are stored in); sigmoid(x) = 0.5 tanh(x / 2) + 0.5.
#pragma once

#include <type_traits>

namespace flashrnn {

__device__ __forceinline__ float fast_rcp(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;  // rcp(inf) = 0, rcp(0) = inf
}

__device__ __forceinline__ float tanh_approx(float x) {
  float r;
  asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// log(sigmoid(x)) without overflow: min(x, 0) - log1p(exp(-|x|)), with log1p(e) as the fast
// log(1 + e): 1 + e rounds away e below 2^-24, an absolute error under 6e-8 (and __logf's own
// is ~4e-7 on [1, 2]); log1pf cost ~30 instructions on the fused step's critical path.
__device__ __forceinline__ float log_sigmoid(float x) {
  return fminf(x, 0.f) - __logf(1.f + __expf(-fabsf(x)));
}

struct PreciseMath {
  __device__ static float sigmoid(float x) { return fast_rcp(1.f + __expf(-x)); }
  // tanh(x) = 1 - 2 / (1 + e^{2x}); saturates to +-1 without overflow trouble.
  __device__ static float tanh(float x) { return 1.f - 2.f * fast_rcp(1.f + __expf(2.f * x)); }
};

struct FastMath {
  __device__ static float sigmoid(float x) { return fmaf(0.5f, tanh_approx(0.5f * x), 0.5f); }
  __device__ static float tanh(float x) { return tanh_approx(x); }
};

template <class T>
using MathFor = std::conditional_t<std::is_same_v<T, float>, PreciseMath, FastMath>;

}  // namespace flashrnn
