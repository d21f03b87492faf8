// Fused forward: one persistent CTA per (head, batch tile of 8 or 16 rows) runs all T steps.
//
// What a CTA owns: the head's whole R (Gr x D x D) as tensor-core A fragments in registers,
// loaded once; biases and the fp32 states (h, c, n, m) of its rows x D elements in registers.
// The product runs transposed, units as M and batch rows as N (m16n8k16; 3xTF32 for fp32): one
// M tile holds gates 2p and 2p + 1 of a warp's 8 units, so an 8-row batch tile wastes nothing
// and each lane ends up with every gate of its unit for its rows. Per step: h_{t-1} (dtype) is
// read from a shared double buffer with ldmatrix (the B fragments), each warp multiplies it by
// its units' rows of every R_k, adds Wx_t (prefetched into a shared ring with cp.async, 2-3
// steps ahead) and the bias, runs the cell, writes h_t to the other shared buffer and the other
// outputs (states, saved values) to a shared staging buffer; during the next step all threads
// copy the step's outputs to global memory as whole rows.
// Synchronization: one __syncthreads per step (it publishes h_t and the Wx ring slot).
// Shared memory: tuning.h forward_layout; the ring depth follows the device's limit.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "tuning.h"

namespace flashrnn {

// kTilesN: N tiles of 8 batch rows per CTA (1 or 2, fused::rows_per_cta).
template <class Cell, class T, int kHeadDim, int kTilesN>
__global__ void __launch_bounds__(fused::warps(kHeadDim) * 32, 1)
    fused_forward_kernel(const ForwardParams p, const int stages) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGw = Cell::kGatesW, kGb = Cell::kGatesB;
  constexpr int kS = Cell::kStates, kSaved = Cell::kSaved;
  constexpr int kChunks = kHeadDim / M::kK;
  constexpr int kTiles = (kGr + 1) / 2;  // M tiles: gates (2p, 2p + 1) x this warp's 8 units
  constexpr int kOut = kS + kSaved;  // outputs per unit and row of one step
  constexpr fused::Layout L = fused::forward_layout(kHeadDim, sizeof(T), kGw, kOut);
  constexpr int kRows = fused::kBatchTile, kThreads = fused::warps(kHeadDim) * 32;

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = thread_index(), warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim, ND = N * D;
  constexpr int rows = 8 * kTilesN, tiles_n = kTilesN;
  const int64_t n = blockIdx.y, b0 = int64_t(blockIdx.x) * rows;
  const int unit = warp * 8 + g;       // this lane's unit, for batch rows 8 nt + 2q + e
  const bool active = warp * 8 < D;    // warp-uniform; warps past D are bucket padding
  bool row_ok[2][2];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) row_ok[nt][e] = active && nt < tiles_n && b0 + 8 * nt + 2 * q + e < B;
  const T* wx = static_cast<const T*>(p.wx);
  const T* r = static_cast<const T*>(p.r);
  const T* bias = static_cast<const T*>(p.bias);
  T* states = static_cast<T*>(p.states);
  T* saved = static_cast<T*>(p.saved);
  const int64_t step_stride = B * ND, state_stride = (steps + 1) * step_stride;

  // A fragments: rows m < 8 are R[2p, n, unit, :], rows m >= 8 are R[2p + 1, n, unit, :] (zero
  // past the last gate, and past D in bucket padding).
  uint32_t ra[kTiles][kChunks][4];
#pragma unroll
  for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
#pragma unroll
      for (int i = 0; i < 4; ++i) ra[tile][c][i] = 0u;
      if (active && c * M::kK < D) {
        const T* lo = r + ((2 * tile * N + n) * D + unit) * D + c * M::kK;
        M::load_a_rows(ra[tile][c], lo, 2 * tile + 1 < kGr ? lo + N * D * D : nullptr);
      }
    }

  float bb[kGb];
#pragma unroll
  for (int k = 0; k < kGb; ++k) bb[k] = active ? load_one(bias + (k * N + n) * D + unit) : 0.f;

  float st[2][2][kS];  // [N tile][row][state] of batch row b0 + 8 nt + 2q + e, fp32 for the whole sequence
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int s = 0; s < kS; ++s)
        st[nt][e][s] = row_ok[nt][e] ? load_one(states + s * state_stride + (b0 + 8 * nt + 2 * q + e) * ND + n * D + unit) : 0.f;

  auto h_row = [&](int buf, int row) {
    return reinterpret_cast<T*>(smem + (buf * kRows + row) * L.a_row);
  };
  // Outputs of step t: h_t is in the h buffer already; the other states and the saved values
  // go to a shared double buffer (stage(t & 1, o, row)) and leave for global memory during
  // step t + 1 (after its barrier), as whole rows in 16-byte pieces by all threads: consecutive
  // threads write consecutive pieces of a row, so a warp's store covers whole 128-byte lines.
  auto stage = [&](int buf, int o, int row) {  // o = 1 .. kOut - 1: states 1.., then saved values
    return reinterpret_cast<T*>(smem + L.side_offset + ((buf * (kOut - 1) + o - 1) * kRows + row) * L.a_row);
  };
  constexpr int kPerPiece = 16 / int(sizeof(T)), kPiecesPerRow = kHeadDim / kPerPiece;
  constexpr int kPieces = kOut * rows * kPiecesPerRow, kPiecesPerThread = (kPieces + kThreads - 1) / kThreads;
  // Each thread owns the same pieces every step: where they come from (bytes into buffer 0 of
  // the h buffer or the staging) is fixed, where they go moves by one step per write.
  bool out_live[kPiecesPerThread], out_h[kPiecesPerThread], out_state[kPiecesPerThread];
  int out_src[kPiecesPerThread];
  T* out_dst[kPiecesPerThread];  // where the piece of the next step goes; moves one step per write
#pragma unroll
  for (int j = 0; j < kPiecesPerThread; ++j) {
    const int i = tid + kThreads * j, c = i % kPiecesPerRow, row = i / kPiecesPerRow % rows;
    const int o = i / kPiecesPerRow / rows;
    out_live[j] = i < kPieces && b0 + row < B && c * kPerPiece < D && (o < kS || saved != nullptr);
    out_state[j] = o < kS;
    out_h[j] = o == 0;
    out_src[j] = int((o == 0 ? h_row(0, row) : stage(0, o, row)) + c * kPerPiece - reinterpret_cast<T*>(smem)) * int(sizeof(T));
    // step 0's outputs: states index 1, saved index 0
    out_dst[j] = !out_live[j] ? nullptr
                 : o < kS     ? states + o * state_stride + step_stride + (b0 + row) * ND + n * D + c * kPerPiece
                              : saved + ((b0 + row) * kSaved + o - kS) * ND + n * D + c * kPerPiece;
  }
  const int64_t saved_stride = kSaved * step_stride;
  auto write_out = [&](int64_t t) {  // step t's outputs, then moves on to step t + 1's
    const int h_shift = int((t + 1) & 1) * kRows * L.a_row, stage_shift = int(t & 1) * (kOut - 1) * kRows * L.a_row;
#pragma unroll
    for (int j = 0; j < kPiecesPerThread; ++j) {
      if (!out_live[j]) continue;
      copy_16(out_dst[j], smem + out_src[j] + (out_h[j] ? h_shift : stage_shift));
      out_dst[j] += out_state[j] ? step_stride : saved_stride;
    }
  };

  // Zero both h buffers (bucket padding columns and missing rows stay zero), then h_0.
  for (int i = tid; i < 2 * kRows * L.a_row / 4; i += blockDim.x) reinterpret_cast<uint32_t*>(smem)[i] = 0u;
  __syncthreads();
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
      if (row_ok[nt][e]) store_one(h_row(0, 8 * nt + 2 * q + e) + unit, st[nt][e][0]);

  // Wx_t tile -> ring slot: rows x Gw gates x D values in 16-byte copies; each thread owns the
  // same few copies every step, so their offsets are computed once.
  constexpr int kCopiesPerGate = kHeadDim * int(sizeof(T)) / 16;
  constexpr int kCopies = 8 * kTilesN * kGw * kCopiesPerGate;
  constexpr int kCopiesPerThread = (kCopies + kThreads - 1) / kThreads;
  int64_t copy_src[kCopiesPerThread];
  int copy_dst[kCopiesPerThread];
  bool copy_live[kCopiesPerThread], copy_ok[kCopiesPerThread];
#pragma unroll
  for (int j = 0; j < kCopiesPerThread; ++j) {
    const int i = tid + j * kThreads;
    const int row = i / (kGw * kCopiesPerGate), k = i / kCopiesPerGate % kGw, c = i % kCopiesPerGate;
    const int64_t b = b0 + row, col = int64_t(c) * 16 / sizeof(T);
    copy_live[j] = i < kCopies;
    copy_ok[j] = copy_live[j] && b < B && col < D;
    copy_src[j] = copy_ok[j] ? b * p.wx_stride_b + k * ND + n * D + col : 0;
    copy_dst[j] = row * L.ring_row + (k * kHeadDim + int(col)) * int(sizeof(T));
  }
  unsigned char* ring = smem + L.ring_offset;
  const int slot_bytes = kRows * L.ring_row;
  // Prefetches the next step in order (0, 1, ...) into ring slot `slot`.
  const T* wx_next = wx;  // Wx of the next step to prefetch
  int64_t next = 0;
  auto prefetch = [&](int slot) {
    if (next >= steps) return;
#pragma unroll
    for (int j = 0; j < kCopiesPerThread; ++j)
      if (copy_live[j]) cp_async_16(ring + slot * slot_bytes + copy_dst[j], copy_ok[j] ? wx_next + copy_src[j] : wx, copy_ok[j]);
    wx_next += p.wx_stride_t;
    ++next;
  };
  for (int s = 0; s < stages - 1; ++s) {
    prefetch(s);
    cp_async_commit();
  }

  const float clip = p.forward_clip_value;
  // ldmatrix x4 of 8 rows x 64 bytes: the B fragments of chunks 2j and 2j + 1.
  // (Shared-window addresses computed once: per step they cost a special-register read.)
  const uint32_t b_lane = smem_addr(smem) + (lane & 7) * L.a_row + (lane >> 3) * 16;
  int slot = 0;  // ring slot of step t
  for (int64_t t = 0; t < steps; ++t) {
    cp_async_wait_at_most(stages - 2);
    __syncthreads();  // h_t-1 and the Wx_t slot are visible; slot (t-1) may be refilled
    prefetch(slot == 0 ? stages - 1 : slot - 1);  // step t + stages - 1
    cp_async_commit();
    const unsigned char* slot_ptr = ring + slot * slot_bytes;
    slot = slot + 1 == stages ? 0 : slot + 1;
    if (!active) {
      if (t > 0) write_out(t - 1);
      continue;
    }

    // Pre-activations: R h_{t-1} + Wx_t + b. The MMA chains do not wait for the shared loads of
    // Wx_t (added after the product): they start from zero, or with 8-row tiles from the bias
    // (8 FADDs per step fewer; 8-row tiles run one CTA per SM, so the registers this keeps live
    // cost no occupancy, while 16-row tiles need two CTAs per SM: measured 1.03 -> 1.53 ms at
    // B = 256). Gates without R (GRU's n) keep their whole sum Wx_t + b in wb.
    constexpr bool kBiasFirst = kTilesN == 1;
    float wb[kGb][2][2];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const T* wx_row = reinterpret_cast<const T*>(slot_ptr + (8 * nt + 2 * q + e) * L.ring_row) + unit;
#pragma unroll
        for (int k = 0; k < kGb; ++k) {
          wb[k][nt][e] = kBiasFirst && k < kGr ? -0.f : bb[k];
          if (k >= kGb - kGw && nt < tiles_n) wb[k][nt][e] += load_one(wx_row + (k - (kGb - kGw)) * kHeadDim);
        }
      }
    // Two accumulators per tile (even and odd chunks) halve the dependent MMA chain.
    float acc[kTiles][2][4], acc_odd[kTiles][2][4];
#pragma unroll
    for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          acc[tile][nt][e] = kBiasFirst && 2 * tile + e / 2 < kGr ? bb[2 * tile + e / 2] : 0.f;
          acc_odd[tile][nt][e] = 0.f;
        }
    // Chunks past D (bucket padding) multiply zero R fragments by zero h columns: cheaper than a
    // branch per chunk, which also kept the compiler from hoisting the address (SASS).
    const uint32_t b_src = b_lane + int(t & 1) * kRows * L.a_row;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
#pragma unroll
      for (int j = 0; j < kChunks / 2; ++j) {
        uint32_t bf[4];
        ldmatrix_x4(bf, b_src + nt * 8 * L.a_row + j * 64);
        const uint32_t b_even[2] = {bf[0], bf[1]}, b_odd[2] = {bf[2], bf[3]};
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) {
          M::mma(acc[tile][nt], ra[tile][2 * j], b_even, p.allow_tf32);
          M::mma(acc_odd[tile][nt], ra[tile][2 * j + 1], b_odd, p.allow_tf32);
        }
      }
      if constexpr (kChunks % 2 == 1) {
        uint32_t bf[2];
        ldmatrix_x2(bf, b_src + nt * 8 * L.a_row + (kChunks - 1) * 32);
#pragma unroll
        for (int tile = 0; tile < kTiles; ++tile) M::mma(acc[tile][nt], ra[tile][kChunks - 1], bf, p.allow_tf32);
      }
#pragma unroll
      for (int tile = 0; tile < kTiles; ++tile)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          acc[tile][nt][e] = acc[tile][nt][e] + acc_odd[tile][nt][e] +
                             (2 * tile + e / 2 < kGr ? wb[2 * tile + e / 2][nt][e % 2] : 0.f);
    }
    // Step t-1's outputs leave while the MMAs run (the shared loads they wait for no longer
    // delay the product).
    if (t > 0) write_out(t - 1);

    float sv[2][2][kSaved];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        // The cell adds rh + wx + b; each gate's whole sum is already in one of them, the
        // others get -0 (x + -0 == x exactly, so the compiler drops those adds).
        float rh[kGr], wu[kGw], bu[kGb];
#pragma unroll
        for (int k = 0; k < kGb; ++k) {
          const float sum = k < kGr ? acc[k / 2][nt][2 * (k % 2) + e] : wb[k][nt][e];
          if (k < kGr) rh[k] = sum;
          if (k >= kGb - kGw) wu[k - (kGb - kGw)] = k < kGr ? -0.f : sum;
          bu[k] = k < kGr || k >= kGb - kGw ? -0.f : sum;
        }
        Cell::template forward<Math>(rh, wu, bu, st[nt][e], sv[nt][e]);
        if (p.forward_clip) st[nt][e][0] = fminf(fmaxf(st[nt][e][0], -clip), clip);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      if (nt >= tiles_n) break;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int row = 8 * nt + 2 * q + e;
        store_one(h_row((t + 1) & 1, row) + unit, st[nt][e][0]);
#pragma unroll
        for (int s = 1; s < kS; ++s) store_one(stage(t & 1, s, row) + unit, st[nt][e][s]);
        if (saved != nullptr) {
#pragma unroll
          for (int k = 0; k < kSaved; ++k) store_one(stage(t & 1, kS + k, row) + unit, sv[nt][e][k]);
        }
      }
    }
  }
  cp_async_wait<0>();
  if (steps > 0) {
    __syncthreads();
    write_out(steps - 1);
  }
}

template <class Cell, class T, int kHeadDim>
void launch_fused_forward(const ForwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  constexpr fused::Layout L = fused::forward_layout(kHeadDim, sizeof(T), Cell::kGatesW, Cell::kStates + Cell::kSaved);
  const int stages = L.stages(device.smem_per_block);
  FLASHRNN_CHECK(stages >= 2, "fused forward does not fit " << device.smem_per_block << " bytes of shared memory");
  const int rows = fused::rows_per_cta(p.batch, p.heads, device.sm_count);
  auto kernel = rows == 8 ? fused_forward_kernel<Cell, T, kHeadDim, 1> : fused_forward_kernel<Cell, T, kHeadDim, 2>;
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L.bytes(stages)));
  const dim3 grid(unsigned((p.batch + rows - 1) / rows), unsigned(p.heads));
  kernel<<<grid, fused::warps(kHeadDim) * 32, L.bytes(stages), stream>>>(p, stages);
  FLASHRNN_CHECK_LAUNCH("fused_forward_kernel");
}

}  // namespace flashrnn
