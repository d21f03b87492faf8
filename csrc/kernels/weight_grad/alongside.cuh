// dR and db computed alongside the multi-CTA backward (multi_backward.cuh, 16-bit types): extra CTAs
// of its cooperative grid, on SMs its recurrent CTAs leave free (768 x 1: 96 of 132), sum the
// weight gradients of the steps the recurrence has finished while it runs the next ones, instead
// of a weight_grad_kernel launch after it (768 x 1 B = 64: 2.5 ms after a 14 ms recurrence).
//
// The steps are cut into blocks of about 1024 dg rows (sizes.h alongside_block_steps), taken in the
// order the recurrence publishes them (t = T down to 1). The outputs are tiles of 128 x 128 of each
// head's dR (rows m = (gate, unit i) of Gr * D, columns j of D) with db in the tiles of column 0;
// CTA w of W owns tiles w, w + W, ... in every block, so each output element is summed by one
// thread in a fixed order (bitwise reproducible). Per block the CTA waits for the progress flags
// (every CTA past the block's last step), then per tile multiplies the block's dg rows by their h
// rows on the tensor cores (at most ~1024 products per fp32 accumulator) and adds the result to an
// fp32 running sum in the workspace; the last block writes dR and db in the output dtype.
#pragma once

#include "../../common/params.h"
#include "../common/device.cuh"
#include "../multi/cooperative.cuh"
#include "sizes.h"
#include "weight_grad.cuh"

namespace flashrnn::alongside {

// A CTA's tile: 128 x 128 outputs, warps of 32 x 64 (4 x 2 warps: per 16-row k-step 6 ldmatrix for
// 16 mma); dg and h rows staged kChunk at a time in a cp.async ring, one block barrier per chunk.
constexpr int kTileM = 128, kTileN = 128, kChunk = 64, kPad = 8, kThreads = 256, kWarpN = 64;
constexpr int kRowA = kTileM + kPad, kRowB = kTileN + kPad;  // elements per staged row (no bank conflicts)
constexpr int kStages = 4;                                   // chunks in the ring
constexpr int kStageBytes = kChunk * (kRowA + kRowB) * 2;   // 16-bit elements: 34 KB (136 KB in all)
constexpr int kSmemBytes = kStages * kStageBytes;
// The dg row and h row of one 16-byte copy, walked one chunk at a time through a block's rows
// (b, t), t fastest in [t_lo, t_lo + len) (dg rows of one b are adjacent in memory: b fastest, the
// rows of a chunk were 6 MB apart at 768 x 1 and B = 64, a TLB miss each), without divisions.
struct RowWalk {
  int t, b;
  __device__ __forceinline__ void next(int adv_t, int adv_b, int t_end, int len) {
    t += adv_t;
    b += adv_b;
    if (t >= t_end) {
      t -= len;
      ++b;
    }
  }
};

// CTA `worker` of `workers`: dR and db of p from dg (p.dg) and h (p.states[0]), as the recurrence's
// progress flags (`flags`, `count` of them for all heads, each at steps done) allow. `smem`: at least
// kSmemBytes. Called by all threads of the CTA.
template <class T>
__device__ void weight_grad_alongside(const BackwardParams& p, int gates_r, int gates_b, int worker, int workers,
                                      const unsigned* flags, int count, unsigned char* smem) {
  static_assert(sizeof(T) == 2, "16-bit types (fp32 keeps weight_grad_kernel's 3xTF32 path)");
  const int tid = threadIdx.x, warp = tid / 32;
  const int batch = int(p.batch), steps = int(p.steps);
  const int64_t N = p.heads, D = p.head_dim, ND = N * D, M = gates_r * D, Mb = gates_b * D;
  const int64_t m_tiles = (Mb + kTileM - 1) / kTileM, n_tiles = (D + kTileN - 1) / kTileN;
  const int64_t tiles = m_tiles * n_tiles * N;
  const int tau = int(weight_grad::alongside_block_steps(batch)), blocks = (steps + tau - 1) / tau;
  const T* dg = static_cast<const T*>(p.dg);
  const T* h = static_cast<const T*>(p.states);
  float* sum_r = p.workspace;                   // [Gr][N][D][D] fp32 running sums
  float* sum_b = p.workspace + M * ND;          // [Gb][N][D]
  const int wm = warp / 2 * 32, wn = warp % 2 * kWarpN;  // this warp's corner of the tile
  // This thread's 16-byte copies of a chunk: rows kk + c * kStride of dg and of h, at column col of the
  // tile (as wide in m as in n).
  static_assert(kTileM == kTileN, "dg and h copies share their rows");
  constexpr int kStride = kThreads / (kTileM / 8), kCopies = kChunk / kStride;
  const int kk = tid / (kTileM / 8), col = tid % (kTileM / 8) * 8;
  auto a_stage = [&](int s) { return reinterpret_cast<T*>(smem + s * kStageBytes); };
  auto b_stage = [&](int s) { return reinterpret_cast<T*>(smem + s * kStageBytes + kChunk * kRowA * 2); };

  for (int blk = 0; blk < blocks; ++blk) {
    const int t_hi = steps - blk * tau, t_lo = t_hi > tau ? t_hi - tau : 0;  // 0-based steps [t_lo, t_hi)
    const int len = t_hi - t_lo, chunks = (len * batch + kChunk - 1) / kChunk;
    const int adv_t = kChunk % len, adv_b = kChunk / len;  // a walk's step: one chunk
    // One warp polls, every microsecond (the recurrent CTAs poll the same lines every step).
    multi::wait_for_flags<32, 1000>(flags, count, unsigned(steps - t_lo));
    for (int64_t tile = worker; tile < tiles; tile += workers) {
      const int64_t n = tile / (m_tiles * n_tiles), mj = tile % (m_tiles * n_tiles);
      const int64_t m0 = mj / n_tiles * kTileM, j0 = mj % n_tiles * kTileN;
      const bool has_r = m0 < M, sums_db = j0 == 0;
      if (!has_r && !sums_db) continue;
      const bool db_warp = sums_db && wn == 0;
      const bool a_ok = m0 + col < Mb, b_ok = has_r && j0 + col < D;
      // dg column m of gate m / D, unit m % D (a copy of 8 never crosses a gate: D % 16 == 0).
      const int64_t a_col = a_ok ? (m0 + col) / D * ND + n * D + (m0 + col) % D : 0;
      const int64_t b_col = n * D + j0 + col;
      RowWalk rows[kCopies];
#pragma unroll
      for (int c = 0; c < kCopies; ++c) rows[c] = {t_lo + (kk + kStride * c) % len, (kk + kStride * c) / len};
      auto load_chunk = [&](int s) {  // the next chunk of the walk into stage s
#pragma unroll
        for (int c = 0; c < kCopies; ++c) {
          const RowWalk& r = rows[c];
          const bool in = r.b < batch, ra = a_ok && in, rb = b_ok && in;
          cp_async_16(a_stage(s) + (kk + kStride * c) * kRowA + col,
                      ra ? dg + (int64_t(r.b) * steps + r.t) * gates_b * ND + a_col : dg, ra);
          cp_async_16(b_stage(s) + (kk + kStride * c) * kRowB + col,
                      rb ? h + (int64_t(r.t) * batch + r.b) * ND + b_col : h, rb);
          rows[c].next(adv_t, adv_b, t_hi, len);
        }
      };

      float acc[2][kWarpN / 8][4] = {}, acc_db[2][4] = {};
      for (int s = 0; s < kStages - 1; ++s) {
        if (s < chunks) load_chunk(s);
        cp_async_commit();
      }
      for (int c = 0; c < chunks; ++c) {
        cp_async_wait<kStages - 2>();  // chunk c has landed (one group committed per chunk)
        __syncthreads();               // for every thread; and every warp is done with chunk c - 1
        if (c + kStages - 1 < chunks) load_chunk((c + kStages - 1) % kStages);  // into chunk c - 1's buffer
        cp_async_commit();
        const int s = c % kStages;
#pragma unroll
        for (int k0 = 0; k0 < kChunk; k0 += 16)
          weight_grad::kstep16<T, kWarpN / 16>(a_stage(s) + k0 * kRowA, kRowA, b_stage(s) + k0 * kRowB, kRowB, wm,
                                               wn, has_r, db_warp, acc, acc_db);
      }
      cp_async_wait<0>();
      __syncthreads();  // the next tile refills the buffers

      // Running sums: the first block writes them, the last adds them into the outputs. Each value
      // is read and written by the same thread in every block.
      const bool first = blk == 0, last = blk == blocks - 1;
      weight_grad::for_each_output(
          acc, acc_db, m0 + wm, j0 + wn, M, Mb, N, D, n, db_warp,
          [&](int64_t at, float v) {
            if (!first) v += sum_b[at];
            if (last) static_cast<T*>(p.dbias)[at] = from_float<T>(v);
            else sum_b[at] = v;
          },
          [&](int64_t at, float v0, float v1) {
            float2 v = make_float2(v0, v1);
            if (!first) {
              const float2 old = *reinterpret_cast<const float2*>(sum_r + at);
              v.x += old.x;
              v.y += old.y;
            }
            if (last) store_pair(static_cast<T*>(p.dr) + at, v.x, v.y);
            else *reinterpret_cast<float2*>(sum_r + at) = v;
          });
    }
  }
}

}  // namespace flashrnn::alongside
