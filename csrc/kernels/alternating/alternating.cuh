// Alternating family: one kernel launch per step, driven by a host loop in the launcher (no
// Python loop). Works for every head dim that is a multiple of 16 (the Python layer pads other
// head dims with inert zero units) and any batch; R is read from L2 every step.
//
// A CTA owns 8 hidden units x 16 batch rows of one head (grid: x = unit group and batch tile,
// y = head); its 8 warps split the contraction (K = D forward, Gr * D backward) into
// interleaved 16-wide chunks, each on tensor cores (m16n8k16, batch = M; 3xTF32 for fp32) with
// fragments loaded straight from L2, several chunks in flight per warp (the step is bound by
// L2 latency, not bandwidth). Partial products meet in shared memory; then 128 threads run the
// cell, one (batch row, unit) each. States between steps are carried in an fp32 workspace [S, B, N, D]
// (forward: the states; backward: the carried dL/ds), updated in place by their owner thread.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "../weight_grad/weight_grad.cuh"

namespace flashrnn {

namespace alternating {
constexpr int kThreads = 256, kWarps = 8, kRows = 16, kUnits = 8;
constexpr int kInFlight = 4;  // chunks whose fragments a warp loads before multiplying
}

// acc += products of chunks warp, warp + kWarps, ... < chunks. load(c, a, b) fetches chunk c's
// fragments. Each round of kInFlight chunks accumulates into a fresh fragment that is then
// added to `acc` in fp32: tensor-core accumulation does not round to nearest, so long sums
// (K = Gr * D up to 8192) are formed in two levels.
template <class T, int kN, class Load>
__device__ __forceinline__ void accumulate_chunks(float (&acc)[kN][4], int64_t chunks, bool tf32, Load load) {
  using namespace alternating;
  const int warp = threadIdx.x / 32;
  for (int64_t c0 = warp; c0 < chunks; c0 += kWarps * kInFlight) {
    uint32_t a[kInFlight][4], b[kInFlight][kN][2];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u)
      if (c0 + u * kWarps < chunks) load(c0 + u * kWarps, a[u], b[u]);
    float part[kN][4] = {};
#pragma unroll
    for (int u = 0; u < kInFlight; ++u)
      if (c0 + u * kWarps < chunks)
#pragma unroll
        for (int k = 0; k < kN; ++k) Mma<T>::mma(part[k], a[u], b[u][k], tf32);
#pragma unroll
    for (int k = 0; k < kN; ++k)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[k][e] += part[k][e];
  }
}

// Sum of the 4 warps' partial C fragments of one n8 tile: writes red[warp][row][col].
__device__ __forceinline__ void stash_fragment(float (*red)[alternating::kRows][alternating::kUnits + 1],
                                               const float (&acc)[4]) {
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, q = threadIdx.x % 4;
  red[warp][g][2 * q] = acc[0];
  red[warp][g][2 * q + 1] = acc[1];
  red[warp][g + 8][2 * q] = acc[2];
  red[warp][g + 8][2 * q + 1] = acc[3];
}

template <class Cell, class T>
__global__ void __launch_bounds__(alternating::kThreads)
    alternating_forward_kernel(const ForwardParams p, int64_t t) {
  using namespace alternating;
  using M = Mma<T>;
  constexpr int kGr = Cell::kGatesR, kGw = Cell::kGatesW, kGb = Cell::kGatesB;
  constexpr int kS = Cell::kStates, kSaved = Cell::kSaved;
  __shared__ float red[kGr][kWarps][kRows][kUnits + 1];

  const int g = threadIdx.x % 32 / 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  const int64_t groups = D / kUnits, u0 = blockIdx.x % groups * kUnits, b0 = blockIdx.x / groups * kRows, n = blockIdx.y;
  const T* r = static_cast<const T*>(p.r);
  T* states = static_cast<T*>(p.states);

  // gates[b, k, i] = sum_j h_{t-1}[b, j] R[k, n, i, j] for i in [u0, u0 + 8)
  float acc[kGr][4] = {};
  const T* h = states + (t * B + b0) * ND + n * D;  // states[0, t, b0], rows ND apart
  const bool lo = b0 + g < B, hi = b0 + g + 8 < B;
  accumulate_chunks<T>(acc, D / M::kK, p.allow_tf32, [&](int64_t c, uint32_t (&a)[4], uint32_t (&bf)[kGr][2]) {
    M::load_a(a, h + c * M::kK, ND, lo, hi);
#pragma unroll
    for (int k = 0; k < kGr; ++k) M::load_b(bf[k], r + ((k * N + n) * D + u0) * D + c * M::kK, D);
  });
#pragma unroll
  for (int k = 0; k < kGr; ++k) stash_fragment(red[k], acc[k]);
  __syncthreads();

  const int row = threadIdx.x / kUnits, col = threadIdx.x % kUnits;
  const int64_t b = b0 + row, u = u0 + col;
  if (threadIdx.x >= kRows * kUnits || b >= B) return;
  const T* wx = static_cast<const T*>(p.wx) + b * p.wx_stride_b + t * p.wx_stride_t + n * D + u;
  const T* bias = static_cast<const T*>(p.bias) + n * D + u;
  float* carry = p.workspace + (b * N + n) * D + u;  // [S, B, N, D]
  const int64_t carry_stride = B * ND;
  float rh[kGr], w[kGw], bb[kGb], s[kS], sv[kSaved];
#pragma unroll
  for (int k = 0; k < kGr; ++k) {
    rh[k] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) rh[k] += red[k][w][row][col];
  }
#pragma unroll
  for (int k = 0; k < kGw; ++k) w[k] = to_float(wx[k * ND]);
#pragma unroll
  for (int k = 0; k < kGb; ++k) bb[k] = to_float(bias[k * ND]);
#pragma unroll
  for (int i = 0; i < kS; ++i) s[i] = carry[i * carry_stride];
  Cell::template forward<MathFor<T>>(rh, w, bb, s, sv);
  if (p.forward_clip) s[0] = fminf(fmaxf(s[0], -p.forward_clip_value), p.forward_clip_value);
#pragma unroll
  for (int i = 0; i < kS; ++i) {
    carry[i * carry_stride] = s[i];
    states[((i * (steps + 1) + t + 1) * B + b) * ND + n * D + u] = from_float<T>(s[i]);
  }
  if (p.saved != nullptr) {
    T* out = static_cast<T*>(p.saved) + (t * B + b) * kSaved * ND + n * D + u;
#pragma unroll
    for (int k = 0; k < kSaved; ++k) out[k * ND] = from_float<T>(sv[k]);
  }
}

// Step t = T..1 runs the cell's backward; t = 0 only forms dL/ds_0.
template <class Cell, class T>
__global__ void __launch_bounds__(alternating::kThreads)
    alternating_backward_kernel(const BackwardParams p, const T* __restrict__ rt, int64_t t) {
  using namespace alternating;
  using M = Mma<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB, kS = Cell::kStates, kSaved = Cell::kSaved;
  __shared__ float red[kWarps][kRows][kUnits + 1];

  const int g = threadIdx.x % 32 / 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  const int64_t groups = D / kUnits, u0 = blockIdx.x % groups * kUnits, b0 = blockIdx.x / groups * kRows, n = blockIdx.y;
  T* dg = static_cast<T*>(p.dg);

  // rec[b, j] = sum_{k, i} dg_{t+1}[b, k, i] R[k, n, i, j] for j in [u0, u0 + 8); rt = R^T
  float acc[1][4] = {};
  if (t < steps && !p.recurrent_cut) {
    const T* a_base = dg + (b0 * steps + t) * kGb * ND + n * D;  // dg [B, T, Gb, N, D] at step t + 1, row b0
    const bool lo = b0 + g < B, hi = b0 + g + 8 < B;
    accumulate_chunks<T>(acc, kGr * D / M::kK, p.allow_tf32, [&](int64_t c, uint32_t (&a)[4], uint32_t (&bf)[1][2]) {
      const int64_t k = c * M::kK / D, i0 = c * M::kK % D;
      M::load_a(a, a_base + k * ND + i0, steps * kGb * ND, lo, hi);
      M::load_b(bf[0], rt + (n * D + u0) * kGr * D + c * M::kK, kGr * D);
    });
  }
  stash_fragment(red, acc[0]);
  __syncthreads();

  const int row = threadIdx.x / kUnits, col = threadIdx.x % kUnits;
  const int64_t b = b0 + row, u = u0 + col;
  if (threadIdx.x >= kRows * kUnits || b >= B) return;
  const int64_t carry_stride = B * ND;
  float* carry = p.workspace + (b * N + n) * D + u;
  const T* grad = static_cast<const T*>(p.grad_states) + b * ND + n * D + u;
  auto grad_at = [&](int s, int64_t tt) { return to_float(grad[(s * (steps + 1) + tt) * B * ND]); };
  float rec = carry[0];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) rec += red[w][row][col];
  if (p.recurrent_clip) rec = fminf(fmaxf(rec, -p.recurrent_clip_value), p.recurrent_clip_value);

  if (t == 0) {
    T* d0 = static_cast<T*>(p.dstates0) + (b * N + n) * D + u;
#pragma unroll
    for (int s = 0; s < kS; ++s) d0[s * carry_stride] = from_float<T>((s == 0 ? rec : carry[s * carry_stride]) + grad_at(s, 0));
    return;
  }
  const T* states = static_cast<const T*>(p.states) + b * ND + n * D + u;
  const T* saved = static_cast<const T*>(p.saved) + ((t - 1) * B + b) * kSaved * ND + n * D + u;
  float sv[kSaved], sp[kS], sc[kS], ds[kS], dgv[kGb];
#pragma unroll
  for (int k = 0; k < kSaved; ++k) sv[k] = to_float(saved[k * ND]);
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    sp[s] = to_float(states[(s * (steps + 1) + t - 1) * B * ND]);
    sc[s] = to_float(states[(s * (steps + 1) + t) * B * ND]);
    ds[s] = (s == 0 ? rec : carry[s * carry_stride]) + grad_at(s, t);
  }
  Cell::template backward<MathFor<T>>(sv, sp, sc, ds, dgv);
  T* out = dg + (b * steps + t - 1) * kGb * ND + n * D + u;
#pragma unroll
  for (int k = 0; k < kGb; ++k) out[k * ND] = from_float<T>(dgv[k]);
#pragma unroll
  for (int s = 0; s < kS; ++s) carry[s * carry_stride] = ds[s];
}

// rt[n, j, k * D + i] = R[k, n, i, j] (32 x 32 tiles through shared memory).
template <class T>
__global__ void transpose_r_kernel(const T* __restrict__ r, T* __restrict__ rt, int64_t N, int64_t D, int gates_r) {
  __shared__ T tile[32][33];
  const int64_t kn = blockIdx.z, k = kn / N, n = kn % N;
  const int64_t i0 = int64_t(blockIdx.x) * 32, j0 = int64_t(blockIdx.y) * 32;
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t i = i0 + y, j = j0 + threadIdx.x;
    if (i < D && j < D) tile[y][threadIdx.x] = r[((k * N + n) * D + i) * D + j];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t j = j0 + y, i = i0 + threadIdx.x;
    if (i < D && j < D) rt[(n * D + j) * gates_r * D + k * D + i] = tile[threadIdx.x][y];
  }
}

// Copies states[:, 0] into the fp32 carry [S, B, N, D].
template <class T>
__global__ void initial_states_kernel(const T* __restrict__ states, float* __restrict__ carry,
                                      int64_t per_state, int64_t state_stride, int num_states) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= per_state) return;
  for (int s = 0; s < num_states; ++s) carry[s * per_state + i] = to_float(states[s * state_stride + i]);
}

template <class Cell, class T>
void launch_alternating_forward(const ForwardParams& p, cudaStream_t stream) {
  using namespace alternating;
  const int64_t per_state = p.batch * p.heads * p.head_dim;
  initial_states_kernel<T><<<unsigned((per_state + 255) / 256), 256, 0, stream>>>(
      static_cast<const T*>(p.states), p.workspace, per_state, (p.steps + 1) * per_state, Cell::kStates);
  FLASHRNN_CHECK_LAUNCH("initial_states_kernel");
  const dim3 grid(unsigned(p.head_dim / kUnits * ((p.batch + kRows - 1) / kRows)), unsigned(p.heads));
  for (int64_t t = 0; t < p.steps; ++t) {
    alternating_forward_kernel<Cell, T><<<grid, kThreads, 0, stream>>>(p, t);
    FLASHRNN_CHECK_LAUNCH("alternating_forward_kernel");
  }
}

// Workspace: [S, B, N, D] carried gradients, then the db partial sums.
template <class Cell, class T>
void launch_alternating_backward(const BackwardParams& p, cudaStream_t stream) {
  using namespace alternating;
  const int64_t N = p.heads, D = p.head_dim, per_state = p.batch * N * D;
  T* rt = static_cast<T*>(p.workspace_rt);
  transpose_r_kernel<T><<<dim3(unsigned((D + 31) / 32), unsigned((D + 31) / 32), unsigned(Cell::kGatesR * N)),
                          dim3(32, 8), 0, stream>>>(static_cast<const T*>(p.r), rt, N, D, Cell::kGatesR);
  FLASHRNN_CHECK_LAUNCH("transpose_r_kernel");
  FLASHRNN_CUDA_CHECK(cudaMemsetAsync(p.workspace, 0, sizeof(float) * Cell::kStates * per_state, stream));
  const dim3 grid(unsigned(D / kUnits * ((p.batch + kRows - 1) / kRows)), unsigned(N));
  for (int64_t t = p.steps; t >= 0; --t) {
    alternating_backward_kernel<Cell, T><<<grid, kThreads, 0, stream>>>(p, rt, t);
    FLASHRNN_CHECK_LAUNCH("alternating_backward_kernel");
  }
  launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace + Cell::kStates * per_state, stream);
}

}  // namespace flashrnn
