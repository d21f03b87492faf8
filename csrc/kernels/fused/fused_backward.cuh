// Fused backward: one persistent CTA per (head, batch tile of 8 or 16 rows) runs the T steps in
// reverse.
//
// What a CTA owns: R of its head as tensor-core B fragments of the product dg_t R (in registers,
// loaded once); the carried gradients dL/ds (fp32) and the states s_t of its 16 x D elements.
// Per step t = T..1: dh_t = dL/dh_t + clip(pointwise term + R^T dg_{t+1}); the cell's backward
// gives dg_t from the saved values of step t and the states t-1, t; dg_t goes to global memory
// (it is dWx and feeds dR, db) and to a shared double buffer, from which every warp forms its
// units' slice of R^T dg_t for the next step (m16n8k16 with the batch as M).
// The saved values, states t-1 and dL/dstates_t of upcoming steps are prefetched into a shared
// ring with cp.async. Synchronization: one __syncthreads per step. dR and db are reduced after
// this kernel (weight_grad.cuh), deterministically.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "../weight_grad/weight_grad.cuh"
#include "tuning.h"

namespace flashrnn {

template <class Cell, class T, int kHeadDim>
__global__ void __launch_bounds__(fused::warps(kHeadDim) * 32, 1)
    fused_backward_kernel(const BackwardParams p, const int stages, const int rows) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB, kS = Cell::kStates, kSaved = Cell::kSaved;
  constexpr int kChunksPerGate = kHeadDim / M::kK;
  constexpr int kChunks = kGr * kChunksPerGate;  // K = Gr * D of R^T dg
  constexpr int kChains = kChunks < 4 ? kChunks : 4;  // independent accumulators for MMA latency
  constexpr fused::Layout L = fused::backward_layout(kHeadDim, sizeof(T), kGr, kSaved, kS);
  constexpr int kRows = fused::kBatchTile;
  constexpr int kSubRows = kSaved + 2 * kS;  // per batch row of a ring slot: saved, s_{t-1}, dL/ds_t

  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  const int64_t n = blockIdx.y, b0 = int64_t(blockIdx.x) * rows;
  const int unit = warp * 8 + 2 * q;
  const bool active = warp * 8 < D;
  const int my_rows = rows == kRows ? 2 : 1;  // lane rows g (and g + 8 when the CTA has 16)
  const bool row_ok[2] = {active && b0 + g < B, active && rows == kRows && b0 + g + 8 < B};
  const T* r = static_cast<const T*>(p.r);
  const T* states = static_cast<const T*>(p.states);
  const T* saved = static_cast<const T*>(p.saved);
  const T* grad = static_cast<const T*>(p.grad_states);
  T* dg_out = static_cast<T*>(p.dg);
  const int64_t step_stride = B * ND, state_stride = (steps + 1) * step_stride;

  // B fragments of R as a [K = (k, i)] x [this warp's 8 input units j] operand: R[k, n, i, j].
  uint32_t rf[kChunks][2];
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const int k = c / kChunksPerGate, i0 = c % kChunksPerGate * M::kK;
    rf[c][0] = rf[c][1] = 0u;
    if (active && i0 < D) M::load_b_kmajor(rf[c], r + ((k * N + n) * D + i0) * D + warp * 8, D);
  }

  auto dg_row = [&](int buf, int row) { return reinterpret_cast<T*>(smem + (buf * kRows + row) * L.a_row); };
  // Columns past D (bucket padding) and rows past the CTA's batch rows are read as zeros.
  for (int i = threadIdx.x; i < 2 * kRows * L.a_row / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(smem)[i] = 0u;

  float st[2][2][kS];   // s_t, [row][unit][state]
  float dsc[2][2][kS];  // dL/ds_t through paths other than R (cell-defined), fp32
  T* out_dg[2];         // dg of this lane's row at step t: out_dg[rr] + (t - 1) * Gb * step_stride
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int64_t b = b0 + g + 8 * rr;
    out_dg[rr] = dg_out + ((steps - 1) * B + b) * kGb * ND + n * D + unit;
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      st[rr][0][s] = st[rr][1][s] = dsc[rr][0][s] = dsc[rr][1][s] = 0.f;
      if (row_ok[rr]) load_pair(states + s * state_stride + steps * step_stride + b * ND + n * D + unit, st[rr][0][s], st[rr][1][s]);
    }
  }

  // Step t's tile -> a ring slot: per batch row, saved[t-1] (K rows), states[:, t-1] (S rows),
  // grad_states[:, t] (S rows), each head_dim wide. Each thread owns the same copies every
  // step: their offsets at step t = 1 are computed once; step t adds (t - 1) * stride.
  constexpr int kCopiesPerRow = kHeadDim * int(sizeof(T)) / 16;
  constexpr int kCopies = kRows * kSubRows * kCopiesPerRow, kThreads = fused::warps(kHeadDim) * 32;
  constexpr int kCopiesPerThread = (kCopies + kThreads - 1) / kThreads;
  const T* copy_src[kCopiesPerThread];  // source of the next prefetch, moved back one step per prefetch
  int64_t copy_step[kCopiesPerThread];  // elements per step back in time
  int copy_dst[kCopiesPerThread];
  bool copy_live[kCopiesPerThread], copy_ok[kCopiesPerThread];
#pragma unroll
  for (int j = 0; j < kCopiesPerThread; ++j) {
    const int i = threadIdx.x + j * kThreads;
    const int row = i / (kSubRows * kCopiesPerRow), sub = i / kCopiesPerRow % kSubRows, c = i % kCopiesPerRow;
    const int64_t b = b0 + row, col = int64_t(c) * 16 / sizeof(T), at = b * ND + n * D + col;
    copy_live[j] = i < kCopies && row < rows;
    copy_ok[j] = copy_live[j] && b < B && col < D;
    if (sub < kSaved) {
      copy_src[j] = saved + b * kSaved * ND + sub * ND + n * D + col;
      copy_step[j] = kSaved * step_stride;
    } else if (sub < kSaved + kS) {
      copy_src[j] = states + (sub - kSaved) * state_stride + at;
      copy_step[j] = step_stride;
    } else {
      copy_src[j] = grad + (sub - kSaved - kS) * state_stride + step_stride + at;
      copy_step[j] = step_stride;
    }
    copy_dst[j] = row * L.ring_row + (sub * kHeadDim + int(col)) * int(sizeof(T));
    copy_src[j] += (steps - 1) * copy_step[j];  // the first prefetch is step T
    if (!copy_ok[j]) copy_src[j] = states;
  }
  unsigned char* ring = smem + L.ring_offset;
  const int slot_bytes = kRows * L.ring_row;
  // Prefetches step t (called for t = T, T-1, ... in order) into ring slot `slot`.
  auto prefetch = [&](int64_t t, int slot) {
    if (t < 1) return;
#pragma unroll
    for (int j = 0; j < kCopiesPerThread; ++j) {
      if (copy_live[j]) cp_async_16(ring + slot * slot_bytes + copy_dst[j], copy_src[j], copy_ok[j]);
      if (copy_ok[j]) copy_src[j] -= copy_step[j];
    }
  };
  // Ring invariant: at the barrier ending step t, steps t-1 .. t-stages+1 are filled or in
  // flight; the slot of step t is free once that barrier has passed and takes step t-stages.
  // Slots: step t lives in slot (T - t) % stages.
  for (int s = 0; s < stages; ++s) {
    prefetch(steps - s, s);
    cp_async_commit();
  }
  cp_async_wait_at_most(stages - 1);
  __syncthreads();

  // dh_rec = dg_{t+1} R (this warp's 8 units j, 16 batch rows), read from dg buffer `buf`.
  auto recurrent_product = [&](int buf, float (&out)[4]) {
    float acc[kChains][4] = {};
    // Chunks past D (bucket padding) multiply zero R fragments by zero dg columns: cheaper than
    // a branch per chunk, which also kept the compiler from hoisting the address (SASS).
    const uint32_t a_src = smem_addr(dg_row(buf, lane & 15)) + (lane >> 4) * 16;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      uint32_t a[4];
      ldmatrix_x4(a, a_src + c * 32);
      M::mma(acc[c % kChains], a, rf[c], p.allow_tf32);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      out[e] = 0.f;
#pragma unroll
      for (int ch = 0; ch < kChains; ++ch) out[e] += acc[ch][e];
    }
  };
  const float clip = p.recurrent_clip_value;
  auto carried = [&](float rec, float pointwise) {
    const float v = rec + pointwise;
    return p.recurrent_clip ? fminf(fmaxf(v, -clip), clip) : v;
  };

  int slot = 0;  // ring slot of step t
  for (int64_t t = steps; t >= 1; --t) {
    const int this_slot = slot;
    slot = slot + 1 == stages ? 0 : slot + 1;
    if (active) {
      float rec[4] = {};
      if (t < steps && !p.recurrent_cut) recurrent_product((t + 1) & 1, rec);
      const unsigned char* slot_ptr = ring + this_slot * slot_bytes;
      // Loads, then all cell updates, then all stores (independent elements interleave).
      float sv[2][kSaved][2], sp[2][kS][2], gs[2][kS][2];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        if (rr >= my_rows) break;
        const T* srow = reinterpret_cast<const T*>(slot_ptr + (g + 8 * rr) * L.ring_row) + unit;
#pragma unroll
        for (int k = 0; k < kSaved; ++k) load_pair(srow + k * kHeadDim, sv[rr][k][0], sv[rr][k][1]);
#pragma unroll
        for (int s = 0; s < kS; ++s) {
          load_pair(srow + (kSaved + s) * kHeadDim, sp[rr][s][0], sp[rr][s][1]);
          load_pair(srow + (kSaved + kS + s) * kHeadDim, gs[rr][s][0], gs[rr][s][1]);
        }
      }
      float dg[2][2][kGb];
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        if (rr >= my_rows) break;
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          float svu[kSaved], spu[kS], ds[kS];
#pragma unroll
          for (int k = 0; k < kSaved; ++k) svu[k] = sv[rr][k][u];
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            spu[s] = sp[rr][s][u];
            ds[s] = dsc[rr][u][s] + gs[rr][s][u];
          }
          ds[0] = carried(rec[2 * rr + u], dsc[rr][u][0]) + gs[rr][0][u];
          Cell::template backward<Math>(svu, spu, st[rr][u], ds, dg[rr][u]);
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            dsc[rr][u][s] = ds[s];
            st[rr][u][s] = spu[s];
          }
          if (!row_ok[rr]) {
#pragma unroll
            for (int k = 0; k < kGb; ++k) dg[rr][u][k] = 0.f;
          }
        }
      }
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        if (rr >= my_rows) break;
#pragma unroll
        for (int k = 0; k < kGr; ++k) store_pair(dg_row(t & 1, g + 8 * rr) + k * kHeadDim + unit, dg[rr][0][k], dg[rr][1][k]);
        if (row_ok[rr]) {
#pragma unroll
          for (int k = 0; k < kGb; ++k) store_pair(out_dg[rr] + k * ND, dg[rr][0][k], dg[rr][1][k]);
        }
        out_dg[rr] -= kGb * step_stride;
      }
    }
    cp_async_wait_at_most(stages - 2);
    __syncthreads();  // dg_t and ring slot t-1 are visible; slot t is free
    prefetch(t - stages, this_slot);
    cp_async_commit();
  }
  cp_async_wait<0>();

  // dL/ds_0 = what reaches the initial states: carried paths + the gradient on states[:, 0].
  if (!active) return;
  float rec[4] = {};
  if (steps >= 1 && !p.recurrent_cut) recurrent_product(1, rec);
  T* d0 = static_cast<T*>(p.dstates0);
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    if (!row_ok[rr]) continue;  // (false for rr = 1 when the CTA has 8 rows)
    const int64_t at = (b0 + g + 8 * rr) * ND + n * D + unit;
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      float g0, g1;
      load_pair(grad + s * state_stride + at, g0, g1);
      float v0 = dsc[rr][0][s], v1 = dsc[rr][1][s];
      if (s == 0) {
        v0 = carried(rec[2 * rr], v0);
        v1 = carried(rec[2 * rr + 1], v1);
      }
      store_pair(d0 + s * step_stride + at, v0 + g0, v1 + g1);
    }
  }
}

template <class Cell, class T, int kHeadDim>
void launch_fused_backward(const BackwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  constexpr fused::Layout L =
      fused::backward_layout(kHeadDim, sizeof(T), Cell::kGatesR, Cell::kSaved, Cell::kStates);
  const int stages = L.stages(device.smem_per_block);
  FLASHRNN_CHECK(stages >= 2, "fused backward does not fit " << device.smem_per_block << " bytes of shared memory");
  const int rows = fused::rows_per_cta(p.batch, p.heads, device.sm_count);
  auto kernel = fused_backward_kernel<Cell, T, kHeadDim>;
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L.bytes(stages)));
  const dim3 grid(unsigned((p.batch + rows - 1) / rows), unsigned(p.heads));
  kernel<<<grid, fused::warps(kHeadDim) * 32, L.bytes(stages), stream>>>(p, stages, rows);
  FLASHRNN_CHECK_LAUNCH("fused_backward_kernel");
  launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace, stream);
}

}  // namespace flashrnn
