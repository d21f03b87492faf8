// Fused forward: one persistent CTA per (head, batch tile of 8 or 16 rows) runs all T steps.
//
// What a CTA owns: the head's whole R (Gr x D x D) as tensor-core B fragments in registers,
// loaded once; biases and the fp32 states (h, c, n, m) of its rows x D elements in registers.
// Per step: h_{t-1} (dtype) is read from a shared double buffer with ldmatrix, each warp
// multiplies it by its 8-unit slice of every gate's R (m16n8k16; 3xTF32 for fp32), adds Wx_t
// (prefetched into a shared ring with cp.async, 2-3 steps ahead) and the bias, runs the cell,
// writes h_t to the other shared buffer and the states/saved values to global memory.
// Synchronization: one __syncthreads per step (it publishes h_t and the Wx ring slot).
// Shared memory: tuning.h forward_layout; the ring depth follows the device's limit.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "tuning.h"

namespace flashrnn {

template <class Cell, class T, int kHeadDim>
__global__ void __launch_bounds__(fused::warps(kHeadDim) * 32, 1)
    fused_forward_kernel(const ForwardParams p, const int stages, const int rows) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGw = Cell::kGatesW, kGb = Cell::kGatesB;
  constexpr int kS = Cell::kStates, kSaved = Cell::kSaved;
  constexpr int kChunks = kHeadDim / M::kK;
  constexpr fused::Layout L = fused::forward_layout(kHeadDim, sizeof(T), kGw);
  constexpr int kRows = fused::kBatchTile, kThreads = fused::warps(kHeadDim) * 32;

  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  const int64_t n = blockIdx.y, b0 = int64_t(blockIdx.x) * rows;
  const int unit = warp * 8 + 2 * q;  // this lane's units: unit, unit + 1
  const bool active = warp * 8 < D;   // warp-uniform; warps past D are bucket padding
  const int my_rows = rows == kRows ? 2 : 1;  // lane rows g (and g + 8 when the CTA has 16)
  const bool row_ok[2] = {active && b0 + g < B, active && rows == kRows && b0 + g + 8 < B};
  const T* wx = static_cast<const T*>(p.wx);
  const T* r = static_cast<const T*>(p.r);
  const T* bias = static_cast<const T*>(p.bias);
  T* states = static_cast<T*>(p.states);
  T* saved = static_cast<T*>(p.saved);
  const int64_t step_stride = B * ND, state_stride = (steps + 1) * step_stride;

  // R_k^T as B fragments: element (j, i) = R[k, n, i, j] for this warp's output units i.
  uint32_t rf[kGr][kChunks][2];
#pragma unroll
  for (int k = 0; k < kGr; ++k)
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      rf[k][c][0] = rf[k][c][1] = 0u;
      if (active && c * M::kK < D) M::load_b(rf[k][c], r + ((k * N + n) * D + warp * 8) * D + c * M::kK, D);
    }

  float bb[kGb][2];
#pragma unroll
  for (int k = 0; k < kGb; ++k) {
    bb[k][0] = bb[k][1] = 0.f;
    if (active) load_pair(bias + (k * N + n) * D + unit, bb[k][0], bb[k][1]);
  }

  // This lane's outputs: row rr's states at step t are out_states[rr] + t * step_stride + s * state_stride.
  T* out_states[2];
  T* out_saved[2];
  float st[2][2][kS];  // [row][unit][state], fp32 for the whole sequence
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t b = b0 + g + 8 * rr;
    out_states[rr] = states + b * ND + n * D + unit;
    out_saved[rr] = saved == nullptr ? nullptr : saved + b * kSaved * ND + n * D + unit;
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      st[rr][0][s] = st[rr][1][s] = 0.f;
      if (row_ok[rr]) load_pair(out_states[rr] + s * state_stride, st[rr][0][s], st[rr][1][s]);
    }
  }

  auto h_row = [&](int buf, int row) {
    return reinterpret_cast<T*>(smem + (buf * kRows + row) * L.a_row);
  };
#pragma unroll
  for (int buf = 0; buf < 2; ++buf)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) store_pair(h_row(buf, g + 8 * rr) + unit, st[rr][0][0], st[rr][1][0]);

  // Wx_t tile -> ring slot: rows x Gw gates x D values in 16-byte copies; each thread owns the
  // same few copies every step, so their offsets are computed once.
  constexpr int kCopiesPerGate = kHeadDim * int(sizeof(T)) / 16;
  constexpr int kCopies = kRows * kGw * kCopiesPerGate;
  constexpr int kCopiesPerThread = (kCopies + kThreads - 1) / kThreads;
  int64_t copy_src[kCopiesPerThread];
  int copy_dst[kCopiesPerThread];
  bool copy_live[kCopiesPerThread], copy_ok[kCopiesPerThread];
#pragma unroll
  for (int j = 0; j < kCopiesPerThread; ++j) {
    const int i = threadIdx.x + j * kThreads;
    const int row = i / (kGw * kCopiesPerGate), k = i / kCopiesPerGate % kGw, c = i % kCopiesPerGate;
    const int64_t b = b0 + row, col = int64_t(c) * 16 / sizeof(T);
    copy_live[j] = i < kCopies && row < rows;
    copy_ok[j] = copy_live[j] && b < B && col < D;
    copy_src[j] = copy_ok[j] ? b * p.wx_stride_b + k * ND + n * D + col : 0;
    copy_dst[j] = row * L.ring_row + (k * kHeadDim + int(col)) * int(sizeof(T));
  }
  unsigned char* ring = smem + L.ring_offset;
  const int slot_bytes = kRows * L.ring_row;
  auto prefetch = [&](int64_t t, int slot) {
    if (t >= steps) return;
    const T* wx_t = wx + t * p.wx_stride_t;
#pragma unroll
    for (int j = 0; j < kCopiesPerThread; ++j)
      if (copy_live[j]) cp_async_16(ring + slot * slot_bytes + copy_dst[j], copy_ok[j] ? wx_t + copy_src[j] : wx, copy_ok[j]);
  };
  for (int s = 0; s < stages - 1; ++s) {
    prefetch(s, s);
    cp_async_commit();
  }

  const float clip = p.forward_clip_value;
  int slot = 0;  // ring slot of step t
  for (int64_t t = 0; t < steps; ++t) {
    cp_async_wait_at_most(stages - 2);
    __syncthreads();  // h_t-1 and the Wx_t slot are visible; slot (t-1) may be refilled
    prefetch(t + stages - 1, slot == 0 ? stages - 1 : slot - 1);
    cp_async_commit();
    const unsigned char* slot_ptr = ring + slot * slot_bytes;
    slot = slot + 1 == stages ? 0 : slot + 1;
    if (!active) continue;

    // Pre-activations start as Wx_t + b (independent of h, so these shared loads overlap the
    // barrier and the product), then the product adds R h_{t-1} on top. Gates without R
    // (GRU's n) keep their sum in wb.
    float wb[kGb][4];
#pragma unroll
    for (int k = 0; k < kGb; ++k)
#pragma unroll
      for (int e = 0; e < 4; ++e) wb[k][e] = bb[k][e % 2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      if (rr >= my_rows) break;
      const T* wx_row = reinterpret_cast<const T*>(slot_ptr + (g + 8 * rr) * L.ring_row) + unit;
#pragma unroll
      for (int k = 0; k < kGw; ++k) {
        float w0, w1;
        load_pair(wx_row + k * kHeadDim, w0, w1);
        wb[kGb - kGw + k][2 * rr] += w0;
        wb[kGb - kGw + k][2 * rr + 1] += w1;
      }
    }
    float acc[kGr][4];
#pragma unroll
    for (int k = 0; k < kGr; ++k)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[k][e] = wb[k][e];
    // Chunks past D (bucket padding) multiply zero R fragments by zero h columns: cheaper than a
    // branch per chunk, which also kept the compiler from hoisting the address (SASS).
    const uint32_t a_src = smem_addr(h_row(t & 1, lane & 15)) + (lane >> 4) * 16;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      uint32_t a[4];
      ldmatrix_x4(a, a_src + c * 32);
#pragma unroll
      for (int k = 0; k < kGr; ++k) M::mma(acc[k], a, rf[k][c], p.allow_tf32);
    }

    float sv[2][2][kSaved];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      if (rr >= my_rows) break;
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        // The cell adds rh + wx + b; each gate's whole sum is already in one of them, the
        // others get -0 (x + -0 == x exactly, so the compiler drops those adds).
        float rh[kGr], wu[kGw], bu[kGb];
#pragma unroll
        for (int k = 0; k < kGb; ++k) {
          const float sum = k < kGr ? acc[k][2 * rr + u] : wb[k][2 * rr + u];
          if (k < kGr) rh[k] = sum;
          if (k >= kGb - kGw) wu[k - (kGb - kGw)] = k < kGr ? -0.f : sum;
          bu[k] = k < kGr || k >= kGb - kGw ? -0.f : sum;
        }
        Cell::template forward<Math>(rh, wu, bu, st[rr][u], sv[rr][u]);
        if (p.forward_clip) st[rr][u][0] = fminf(fmaxf(st[rr][u][0], -clip), clip);
      }
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      if (rr >= my_rows) break;
      store_pair(h_row((t + 1) & 1, g + 8 * rr) + unit, st[rr][0][0], st[rr][1][0]);
      if (!row_ok[rr]) continue;
      out_states[rr] += step_stride;
#pragma unroll
      for (int s = 0; s < kS; ++s) store_pair(out_states[rr] + s * state_stride, st[rr][0][s], st[rr][1][s]);
      if (saved != nullptr) {
#pragma unroll
        for (int k = 0; k < kSaved; ++k) store_pair(out_saved[rr] + k * ND, sv[rr][0][k], sv[rr][1][k]);
        out_saved[rr] += step_stride * kSaved;
      }
    }
  }
  cp_async_wait<0>();
}

template <class Cell, class T, int kHeadDim>
void launch_fused_forward(const ForwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  constexpr fused::Layout L = fused::forward_layout(kHeadDim, sizeof(T), Cell::kGatesW);
  const int stages = L.stages(device.smem_per_block);
  FLASHRNN_CHECK(stages >= 2, "fused forward does not fit " << device.smem_per_block << " bytes of shared memory");
  const int rows = fused::rows_per_cta(p.batch, p.heads, device.sm_count);
  auto kernel = fused_forward_kernel<Cell, T, kHeadDim>;
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L.bytes(stages)));
  const dim3 grid(unsigned((p.batch + rows - 1) / rows), unsigned(p.heads));
  kernel<<<grid, fused::warps(kHeadDim) * 32, L.bytes(stages), stream>>>(p, stages, rows);
  FLASHRNN_CHECK_LAUNCH("fused_forward_kernel");
}

}  // namespace flashrnn
