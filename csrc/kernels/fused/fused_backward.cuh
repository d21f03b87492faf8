// Fused backward: one persistent CTA per (head, batch tile of 8 or 16 rows) runs the T steps in
// reverse.
//
// What a CTA owns: R of its head as tensor-core A fragments of the product R^T dg (in registers,
// loaded once); the carried gradients dL/ds (fp32) and the states s_t of its rows x D elements.
// Per step t = T..1: dh_t = dL/dh_t + clip(pointwise term + R^T dg_{t+1}); the cell's backward
// gives dg_t from the saved values of step t and the states t-1, t; dg_t goes to global memory
// (it is dWx and feeds dR, db) and to a shared double buffer, from which the next step's product
// reads its B fragments. The product runs transposed (units as M, batch rows as N): warps 2p and
// 2p + 1 share the M tile of units [16p, 16p + 16), each over half of K = Gr * D, and swap the
// halves of their partial sums that belong to the other warp's 8 units (a 64-thread barrier).
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

// kTilesN: N tiles of 8 batch rows per CTA (1 or 2, fused::rows_per_cta).
template <class Cell, class T, int kHeadDim, int kTilesN>
__global__ void __launch_bounds__(fused::warps(kHeadDim) * 32, 1)
    fused_backward_kernel(const BackwardParams p, const int stages) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB, kS = Cell::kStates, kSaved = Cell::kSaved;
  constexpr int kChunksPerGate = kHeadDim / M::kK;
  constexpr int kChunks = kGr * kChunksPerGate;  // K = Gr * D of R^T dg
  constexpr int kHalf = (kChunks + 1) / 2;       // chunks of the first warp of a pair
  constexpr fused::Layout L = fused::backward_layout(kHeadDim, sizeof(T), kGb, kSaved, kS);
  constexpr int kRows = fused::kBatchTile, kThreads = fused::warps(kHeadDim) * 32;
  constexpr int kSubRows = kSaved + 2 * kS;  // per batch row of a ring slot: saved, s_{t-1}, dL/ds_t
  static_assert(fused::warps(kHeadDim) % 2 == 0, "warps work in pairs");

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = thread_index(), warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  constexpr int rows = 8 * kTilesN, tiles_n = kTilesN;
  const int64_t n = blockIdx.y, b0 = int64_t(blockIdx.x) * rows;
  const int unit = warp * 8 + g;      // this lane's unit, for batch rows 8 nt + 2q + e
  const bool active = warp * 8 < D;   // the same for both warps of a pair (D % 16 == 0)
  const int pair = warp / 2, half = warp % 2;
  auto lane_row = [&](int nt, int e) { return b0 + 8 * nt + 2 * q + e; };  // this lane's batch rows
  bool row_ok[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) row_ok[nt][e] = active && nt < tiles_n && lane_row(nt, e) < B;
  const T* r = static_cast<const T*>(p.r);
  const T* states = static_cast<const T*>(p.states);
  const T* saved = static_cast<const T*>(p.saved);
  const T* grad = static_cast<const T*>(p.grad_states);
  T* dg_out = static_cast<T*>(p.dg);
  const int64_t step_stride = B * ND, state_stride = (steps + 1) * step_stride;

  // A fragments of this warp's chunks c = half * kHalf + j of K = (k, i): element (m, i) =
  // R[k, n, i0 + i, 16 pair + m]. Chunks past K or past D (bucket padding) are zero.
  uint32_t ra[kHalf][4];
#pragma unroll
  for (int j = 0; j < kHalf; ++j) {
    const int c = half * kHalf + j, k = c / kChunksPerGate, i0 = c % kChunksPerGate * M::kK;
#pragma unroll
    for (int i = 0; i < 4; ++i) ra[j][i] = 0u;
    if (active && c < kChunks && i0 < D) M::load_a_kmajor(ra[j], r + ((k * N + n) * D + i0) * D + 16 * pair, D);
  }

  auto dg_row = [&](int buf, int row) { return reinterpret_cast<T*>(smem + (buf * kRows + row) * L.a_row); };
  // Columns past D (bucket padding) and rows past the CTA's batch rows read as zeros.
  for (int i = tid; i < 2 * kRows * L.a_row / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(smem)[i] = 0u;
  float2* pair_out = reinterpret_cast<float2*>(smem + L.side_offset + warp * fused::kPairBytes) + lane;  // [nt][lane]
  const float2* pair_in = reinterpret_cast<const float2*>(smem + L.side_offset + (warp ^ 1) * fused::kPairBytes) + lane;

  float st[2][2][kS];   // s_t, [N tile][row][state]
  float dsc[2][2][kS];  // dL/ds_t through paths other than R (cell-defined), fp32
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        dsc[nt][e][s] = 0.f;
        st[nt][e][s] = row_ok[nt][e]
                           ? load_one(states + s * state_stride + steps * step_stride + lane_row(nt, e) * ND + n * D + unit)
                           : 0.f;
      }
  // dg_t leaves for global memory from the shared buffer it was written to, during the next
  // step (the buffer is rewritten only a step later), as whole rows in 16-byte pieces by all
  // threads: consecutive threads write consecutive pieces, so a warp covers whole 128-byte lines.
  constexpr int kPerPiece = 16 / int(sizeof(T)), kPiecesPerRow = kHeadDim / kPerPiece;
  constexpr int kPieces = kGb * rows * kPiecesPerRow, kPiecesPerThread = (kPieces + kThreads - 1) / kThreads;
  bool out_live[kPiecesPerThread];
  int out_src[kPiecesPerThread];      // bytes into buffer 0
  int64_t out_dst[kPiecesPerThread];  // elements from step t of batch row b0 in dg [B, T, Gb, N, D]
#pragma unroll
  for (int j = 0; j < kPiecesPerThread; ++j) {
    const int i = tid + kThreads * j, c = i % kPiecesPerRow, k = i / kPiecesPerRow % kGb;
    const int row = i / kPiecesPerRow / kGb;
    out_live[j] = i < kPieces && b0 + row < B && c * kPerPiece < D;
    out_src[j] = row * L.a_row + (k * kHeadDim + c * kPerPiece) * int(sizeof(T));
    out_dst[j] = (row * steps * kGb + k) * ND + c * kPerPiece;
  }
  auto write_dg = [&](int64_t t) {  // dg_t, from buffer t & 1
    T* dst_t = dg_out + (b0 * steps + t - 1) * kGb * ND + n * D;
    const unsigned char* src = smem + (t & 1) * kRows * L.a_row;
#pragma unroll
    for (int j = 0; j < kPiecesPerThread; ++j)
      if (out_live[j]) copy_16(dst_t + out_dst[j], src + out_src[j]);
  };

  // Step t's tile -> a ring slot: per batch row, saved[t-1] (K rows), states[:, t-1] (S rows),
  // grad_states[:, t] (S rows), each head_dim wide. Each thread owns the same copies every
  // step: their offsets at step t = 1 are computed once; step t adds (t - 1) * stride.
  constexpr int kCopiesPerRow = kHeadDim * int(sizeof(T)) / 16;
  constexpr int kCopies = 8 * kTilesN * kSubRows * kCopiesPerRow;
  constexpr int kCopiesPerThread = (kCopies + kThreads - 1) / kThreads;
  const T* copy_src[kCopiesPerThread];  // source of the next prefetch, moved back one step per prefetch
  bool copy_saved[kCopiesPerThread];    // saved values move kSaved * step_stride per step, the rest step_stride
  int copy_dst[kCopiesPerThread];
  bool copy_live[kCopiesPerThread], copy_ok[kCopiesPerThread];
#pragma unroll
  for (int j = 0; j < kCopiesPerThread; ++j) {
    const int i = tid + j * kThreads;
    const int row = i / (kSubRows * kCopiesPerRow), sub = i / kCopiesPerRow % kSubRows, c = i % kCopiesPerRow;
    const int64_t b = b0 + row, col = int64_t(c) * 16 / sizeof(T), at = b * ND + n * D + col;
    copy_live[j] = i < kCopies;
    copy_ok[j] = copy_live[j] && b < B && col < D;
    copy_saved[j] = sub < kSaved;
    if (sub < kSaved) copy_src[j] = saved + b * kSaved * ND + sub * ND + n * D + col;
    else if (sub < kSaved + kS) copy_src[j] = states + (sub - kSaved) * state_stride + at;
    else copy_src[j] = grad + (sub - kSaved - kS) * state_stride + step_stride + at;
    copy_dst[j] = row * L.ring_row + (sub * kHeadDim + int(col)) * int(sizeof(T));
    copy_src[j] += (steps - 1) * (copy_saved[j] ? kSaved * step_stride : step_stride);  // the first prefetch is step T
    if (!copy_ok[j]) copy_src[j] = states;
  }
  unsigned char* ring = smem + L.ring_offset;
  const int slot_bytes = kRows * L.ring_row;
  const int64_t saved_step = kSaved * step_stride;
  // Prefetches step t (called for t = T, T-1, ... in order) into ring slot `slot`.
  auto prefetch = [&](int64_t t, int slot) {
    if (t < 1) return;
#pragma unroll
    for (int j = 0; j < kCopiesPerThread; ++j) {
      if (copy_live[j]) cp_async_16(ring + slot * slot_bytes + copy_dst[j], copy_src[j], copy_ok[j]);
      if (copy_ok[j]) copy_src[j] -= copy_saved[j] ? saved_step : step_stride;
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

  // rec[nt][e] = (R^T dg_{t+1}) of this lane's unit and rows, with dg read from buffer `buf`.
  // Every warp of the block calls it (it has a pair barrier); warps past D (bucket padding) only
  // take the barrier. The hardware would not need theirs (named barriers are independent), but
  // compute-sanitizer's racecheck counts each warp's barriers and reports false hazards when
  // the counts differ.
  // (Shared-window addresses computed once: per step they cost a special-register read.)
  const uint32_t b_lane = smem_addr(smem) + (lane & 7) * L.a_row + (lane >> 3) * 16 + half * kHalf * 32;
  auto recurrent_product = [&](int buf, float (&rec)[2][2]) {
    if (!active) return named_barrier(1 + pair, 64);
    float acc[2][2][4] = {};  // [chain][N tile]: two chains (even and odd chunks) hide the MMA latency
    const uint32_t b_src = b_lane + buf * kRows * L.a_row;
    // With an odd number of chunks the second warp's last chunk lies past K (its A fragment is
    // zero, but the dg columns there belong to other gates): skipped.
    auto mine = [&](int j) { return kChunks % 2 == 0 || half == 0 || j < kHalf - 1; };
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
#pragma unroll
      for (int j = 0; j < kHalf / 2; ++j) {  // chunks 2j, 2j + 1 of this warp
        uint32_t bf[4];
        ldmatrix_x4(bf, b_src + nt * 8 * L.a_row + j * 64);
        const uint32_t b_even[2] = {bf[0], bf[1]}, b_odd[2] = {bf[2], bf[3]};
        M::mma(acc[0][nt], ra[2 * j], b_even, p.allow_tf32);
        if (mine(2 * j + 1)) M::mma(acc[1][nt], ra[2 * j + 1], b_odd, p.allow_tf32);
      }
      if constexpr (kHalf % 2 == 1) {  // an odd last chunk
        if (mine(kHalf - 1)) {
          uint32_t bf[2];
          ldmatrix_x2(bf, b_src + nt * 8 * L.a_row + (kHalf - 1) * 32);
          M::mma(acc[0][nt], ra[kHalf - 1], bf, p.allow_tf32);
        }
      }
    }
    // Rows m < 8 of the M tile are warp 2p's units, m >= 8 warp 2p + 1's: keep ours, send theirs.
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
      float sum[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) sum[i] = acc[0][nt][i] + acc[1][nt][i];
      pair_out[nt * 32] = half == 0 ? make_float2(sum[2], sum[3]) : make_float2(sum[0], sum[1]);
      rec[nt][0] = half == 0 ? sum[0] : sum[2];
      rec[nt][1] = half == 0 ? sum[1] : sum[3];
    }
    named_barrier(1 + pair, 64);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
      const float2 other = pair_in[nt * 32];
      // Both warps add (first half) + (second half), so the sums do not depend on the warp.
      rec[nt][0] = half == 0 ? rec[nt][0] + other.x : other.x + rec[nt][0];
      rec[nt][1] = half == 0 ? rec[nt][1] + other.y : other.y + rec[nt][1];
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
    float rec[2][2] = {};
    if (t < steps && !p.recurrent_cut) recurrent_product((t + 1) & 1, rec);
    // After the product: its shared loads and MMAs do not wait behind these copies.
    if (t < steps) write_dg(t + 1);
    // This thread's copies of step t-1's slot (needed after the barrier); waited for here,
    // behind the product, so the parameter read and branch stay off the critical path.
    cp_async_wait_at_most(stages - 2);
    if (active) {
      const unsigned char* slot_ptr = ring + this_slot * slot_bytes;
      // Loads, then all cell updates, then all stores (independent elements interleave).
      float sv[2][2][kSaved], sp[2][2][kS], gs[2][2][kS];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        if (nt >= tiles_n) break;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const T* srow = reinterpret_cast<const T*>(slot_ptr + (8 * nt + 2 * q + e) * L.ring_row) + unit;
#pragma unroll
          for (int k = 0; k < kSaved; ++k) sv[nt][e][k] = load_one(srow + k * kHeadDim);
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            sp[nt][e][s] = load_one(srow + (kSaved + s) * kHeadDim);
            gs[nt][e][s] = load_one(srow + (kSaved + kS + s) * kHeadDim);
          }
        }
      }
      float dg[2][2][kGb];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        if (nt >= tiles_n) break;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float ds[kS];
#pragma unroll
          for (int s = 0; s < kS; ++s) ds[s] = dsc[nt][e][s] + gs[nt][e][s];
          ds[0] = carried(rec[nt][e], dsc[nt][e][0]) + gs[nt][e][0];
          Cell::template backward<Math>(sv[nt][e], sp[nt][e], st[nt][e], ds, dg[nt][e]);
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            dsc[nt][e][s] = ds[s];
            st[nt][e][s] = sp[nt][e][s];
          }
          if (!row_ok[nt][e]) {
#pragma unroll
            for (int k = 0; k < kGb; ++k) dg[nt][e][k] = 0.f;
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        if (nt >= tiles_n) break;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
#pragma unroll
          for (int k = 0; k < kGb; ++k) store_one(dg_row(t & 1, 8 * nt + 2 * q + e) + k * kHeadDim + unit, dg[nt][e][k]);
        }
      }
    }
    __syncthreads();  // dg_t and ring slot t-1 are visible; slot t is free
    prefetch(t - stages, this_slot);
    cp_async_commit();
  }
  cp_async_wait<0>();
  if (steps >= 1) write_dg(1);

  // dL/ds_0 = what reaches the initial states: carried paths + the gradient on states[:, 0].
  if (!active) return;
  float rec[2][2] = {};
  if (steps >= 1 && !p.recurrent_cut) recurrent_product(1, rec);
  T* d0 = static_cast<T*>(p.dstates0);
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if (!row_ok[nt][e]) continue;
      const int64_t at = lane_row(nt, e) * ND + n * D + unit;
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        float v = dsc[nt][e][s];
        if (s == 0) v = carried(rec[nt][e], v);
        store_one(d0 + s * step_stride + at, v + load_one(grad + s * state_stride + at));
      }
    }
}

template <class Cell, class T, int kHeadDim>
void launch_fused_backward(const BackwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  constexpr fused::Layout L =
      fused::backward_layout(kHeadDim, sizeof(T), Cell::kGatesB, Cell::kSaved, Cell::kStates);
  const int stages = L.stages(device.smem_per_block);
  FLASHRNN_CHECK(stages >= 2, "fused backward does not fit " << device.smem_per_block << " bytes of shared memory");
  const int rows = fused::rows_per_cta(p.batch, p.heads, device.sm_count);
  auto kernel = rows == 8 ? fused_backward_kernel<Cell, T, kHeadDim, 1> : fused_backward_kernel<Cell, T, kHeadDim, 2>;
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L.bytes(stages)));
  const dim3 grid(unsigned((p.batch + rows - 1) / rows), unsigned(p.heads));
  kernel<<<grid, fused::warps(kHeadDim) * 32, L.bytes(stages), stream>>>(p, stages);
  FLASHRNN_CHECK_LAUNCH("fused_backward_kernel");
  launch_weight_grad<T>(p, Cell::kGatesR, Cell::kGatesB, p.workspace, stream);
}

}  // namespace flashrnn
