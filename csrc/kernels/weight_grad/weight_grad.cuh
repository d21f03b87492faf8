// Weight gradients after the recurrent backward, shared by both families. Deterministic: every
// output element is summed by one thread in a fixed order (no atomics).
//
//   dR[k, n, i, j] = sum_r dg[r, k, n, i] * h[t * B + b, n, j]   r = b * T + t over the T * B rows
//   db[k, n, i]    = sum_r dg[r, k, n, i]                         of dg [B, T, Gb, N, D];
//                                                                 h = states[0, 0..T-1] (the h_{t-1})
//
// dR is a per-head GEMM (M = Gr * D, N = D, K = T * B) on tensor cores: 64 x 64 tiles, 4 warps
// of 32 x 32, K in chunks of 32 rows in a cp.async ring (3 chunks ahead, fp32 1); fp32 runs as
// 3xTF32. Small heads have few tiles, so K is split (sizes.h r_splits) into fixed row ranges
// whose fp32 partial sums a second kernel adds in split order.
// Each chunk's products are summed on the tensor cores, then added to the running sum in
// fp32 FADDs: tensor-core accumulation truncates, and over K = 262144 rows that alone cost
// 2e-3 relative error in fp32 (measured, H100); two levels bring it to ~1e-6.
// db rides along: the CTAs of the first column tile (j0 = 0) also multiply their dg chunks by a
// column of ones on the tensor cores (two-level sums like dR), so dg is read once for both; the
// grid's M tiles cover all Gb gates (GRU's gate without R only has those sums).
#pragma once

#include <type_traits>

#include "../../common/check.h"
#include "../../common/params.h"
#include "../common/device.cuh"
#include "sizes.h"

namespace flashrnn {

namespace weight_grad {
constexpr int kChunk = 32, kThreads = 128;
// CTAs per SM the register budget must allow (16-bit types): the kernel waits on memory chunk by
// chunk, and with the db products ptxas took 156 registers, 3 CTAs per SM (128 x 6: 151 us; with
// 4, 120 us and a few spilled registers). fp32 is left unbounded: capped, it spills 572 bytes.
template <class T>
constexpr int kMinCtas = sizeof(T) == 2 ? 4 : 1;

// One 16-row k-step of a warp's 32 x (16 * kPairs) corner of dR (16-bit types) from shared memory:
// a = dg rows [k][m] (a_row elements apart), b = h rows [k][j] (b_row apart), the corner at (wm, wn);
// dR products into part (if has_r), db products (dg times ones, if db_warp) into part_db.
template <class T, int kPairs = 2>
__device__ __forceinline__ void kstep16(const T* a, int a_row, const T* b, int b_row, int wm, int wn, bool has_r,
                                        bool db_warp, float (&part)[2][2 * kPairs][4], float (&part_db)[2][4]) {
  const int lane = threadIdx.x % 32;
  uint32_t af[2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
    ldmatrix_x4_trans(af[mt], a + ((lane >> 4) * 8 + (lane & 7)) * a_row + wm + mt * 16 + (lane >> 3 & 1) * 8);
  if (db_warp) {
    const uint32_t one = Mma<T>::pack(from_float<T>(1.f), from_float<T>(1.f)), ones[2] = {one, one};
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) Mma<T>::mma(part_db[mt], af[mt], ones, false);
  }
  if (!has_r) return;
#pragma unroll
  for (int np = 0; np < kPairs; ++np) {  // two n-tiles of 8 columns per ldmatrix
    uint32_t r4[4];
    ldmatrix_x4_trans(r4, b + ((lane >> 3 & 1) * 8 + (lane & 7)) * b_row + wn + np * 16 + (lane >> 4) * 8);
    const uint32_t lo[2] = {r4[0], r4[1]}, hi[2] = {r4[2], r4[3]};
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      Mma<T>::mma(part[mt][2 * np], af[mt], lo, false);
      Mma<T>::mma(part[mt][2 * np + 1], af[mt], hi, false);
    }
  }
}

// The outputs a thread holds after kstep16 for the warp's corner at tile rows m_first = m0 + wm and
// columns j_first = j0 + wn of head n (mma fragment layout: rows g and g + 8, columns 2q and 2q + 1):
// db(at, v) for each db value in the output [Gb][N][D] (column-0 warps, q = 0: every column of the
// ones product holds the row sum), r(at, v0, v1) for each pair of adjacent dR values in [Gr][N][D][D].
// Rows at or past M (GRU's last gate has no R) and columns past D hold no output.
template <int kNt, class DbOut, class ROut>
__device__ __forceinline__ void for_each_output(const float (&acc)[2][kNt][4], const float (&acc_db)[2][4],
                                                int64_t m_first, int64_t j_first, int64_t M, int64_t Mb,
                                                int64_t N, int64_t D, int64_t n, bool db_warp, DbOut db, ROut r) {
  const int lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m_first + mt * 16 + g + 8 * half;
      if (db_warp && q == 0 && m < Mb) db((m / D * N + n) * D + m % D, acc_db[mt][2 * half]);
      if (m >= M) continue;
      const int64_t row = ((m / D) * N + n) * D * D + (m % D) * D;
#pragma unroll
      for (int nt = 0; nt < kNt; ++nt) {
        const int64_t j = j_first + nt * 8 + 2 * q;
        if (j < D) r(row + j, acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
      }
    }
}
}  // namespace weight_grad

// Rows [split * rows_per_split, ...) of K; with one split dR and db go to `dr` and `db` (dtype),
// else their fp32 partial sums to r_part[split][Gr][N][D][D] and b_part[split][Gb][N][D].
template <class T>
__global__ void __launch_bounds__(weight_grad::kThreads, weight_grad::kMinCtas<T>)
    weight_grad_kernel(const T* __restrict__ dg, const T* __restrict__ h, T* __restrict__ dr, T* __restrict__ db,
                       float* __restrict__ r_part, float* __restrict__ b_part, int64_t steps, int64_t batch,
                       int64_t rows_per_split, int64_t N, int64_t D, int gates_r, int gates_b, bool tf32) {
  using namespace weight_grad;
  constexpr int kPad = 8;  // row = 64 + 8 elements: ldmatrix / scalar reads without bank conflicts
  constexpr int kRow = kTile + kPad;
  constexpr int kE = 16 / sizeof(T);  // elements per 16-byte copy
  // Chunks in flight: each CTA walks its rows chunk by chunk, so with two buffers every chunk
  // paid a whole memory latency (128 x 6: ~100 chunks per CTA, 124 us). Static shared memory
  // (48 KB) holds four stages of 16-bit chunks, two of fp32.
  constexpr int kStages = sizeof(T) == 2 ? 4 : 2;
  __shared__ __align__(16) T a_s[kStages][kChunk][kRow];  // a_s[k][m] = dg[r0 + k, m]
  __shared__ __align__(16) T b_s[kStages][kChunk][kRow];  // b_s[k][j] = h[r0 + k, j]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t n = blockIdx.z % N, split = blockIdx.z / N;
  const int64_t m0 = int64_t(blockIdx.x) * kTile, j0 = int64_t(blockIdx.y) * kTile;
  const int64_t M = int64_t(gates_r) * D, Mb = int64_t(gates_b) * D, ND = N * D;
  const bool has_r = m0 < M, sums_db = blockIdx.y == 0;  // uniform over the CTA
  if (!has_r && !sums_db) return;
  // This split's rows of dg, shifted to start at 0; h row of dg row r: t * B + b.
  const int64_t all_rows = steps * batch, first = split * rows_per_split;
  const int64_t rows = first + rows_per_split < all_rows ? rows_per_split : all_rows - first;
  dg += first * gates_b * ND;
  const int wm = warp / 2 * 32, wn = warp % 2 * 32;  // this warp's 32 x 32 corner
  // db = dg^T 1: in the first column tile, the warps of column half 0 multiply their A fragments
  // by a ones B fragment too (the fragments are loaded for dR anyway).
  const bool db_warp = sums_db && wn == 0;

  // Each thread's 16-byte copies are at the same row kk of every chunk and the same columns.
  // Chunks are loaded in order, kChunk rows apart: dg moves kChunk rows; the h row of dg row
  // b * T + t is t * B + b, tracked as (t, b) without divisions (t wraps into the next b).
  constexpr int kCopies = kChunk * kTile / kE / kThreads;
  static_assert(kChunk * kTile / kE % kThreads == 0, "whole copies per thread");
  int kk[kCopies], col[kCopies];
  bool a_ok[kCopies], b_ok[kCopies];
  const T* a_src[kCopies];  // dg element of this copy in the split's row 0
  int64_t t_at[kCopies], b_at[kCopies];  // (t, b) of this copy's row in the next chunk
#pragma unroll
  for (int j = 0; j < kCopies; ++j) {
    const int i = threadIdx.x + j * kThreads;
    kk[j] = i / (kTile / kE);
    col[j] = i % (kTile / kE) * kE;
    const int64_t m = m0 + col[j];
    a_ok[j] = m < Mb;
    b_ok[j] = has_r && j0 + col[j] < D;
    a_src[j] = dg + (kk[j] * gates_b + (a_ok[j] ? m / D : 0)) * ND + n * D + m % D;
    t_at[j] = steps > 0 ? (first + kk[j]) % steps : 0;  // T = 0: no rows, dR = db = 0
    b_at[j] = steps > 0 ? (first + kk[j]) / steps : 0;
  }
  auto load_chunk = [&](int buf, int64_t r0) {  // rows [r0, r0 + kChunk) of the split
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const bool row_ok = r0 + kk[j] < rows, ra = row_ok && a_ok[j], rb = row_ok && b_ok[j];
      const T* sa = ra ? a_src[j] + r0 * gates_b * ND : dg;
      const T* sb = rb ? h + (t_at[j] * batch + b_at[j]) * ND + n * D + j0 + col[j] : h;
      cp_async_16(&a_s[buf][kk[j]][col[j]], sa, ra);
      cp_async_16(&b_s[buf][kk[j]][col[j]], sb, rb);
      for (t_at[j] += kChunk; t_at[j] >= steps; t_at[j] -= steps) ++b_at[j];
    }
  };

  float acc[2][4][4] = {}, acc_db[2][4] = {};
  const int64_t chunks = (rows + kChunk - 1) / kChunk;
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < chunks) load_chunk(s, s * kChunk);
    cp_async_commit();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    // Chunk c + kStages - 1 goes to the buffer chunk c - 1 used (freed by the barrier below).
    if (c + kStages - 1 < chunks) load_chunk(int((c + kStages - 1) % kStages), (c + kStages - 1) * kChunk);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // chunk c has arrived
    __syncthreads();
    const int buf = int(c % kStages);
    float part[2][4][4] = {}, part_db[2][4] = {};
    if constexpr (std::is_same_v<T, float>) {
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 8) {
        uint32_t a[2][4], b[4][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const int m = wm + mt * 16 + g;
          a[mt][0] = __float_as_uint(a_s[buf][k0 + q][m]);
          a[mt][1] = __float_as_uint(a_s[buf][k0 + q][m + 8]);
          a[mt][2] = __float_as_uint(a_s[buf][k0 + q + 4][m]);
          a[mt][3] = __float_as_uint(a_s[buf][k0 + q + 4][m + 8]);
        }
        if (db_warp) {
          const uint32_t ones[2] = {__float_as_uint(1.f), __float_as_uint(1.f)};
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) Mma<float>::mma(part_db[mt], a[mt], ones, tf32);
        }
        if (!has_r) continue;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          b[nt][0] = __float_as_uint(b_s[buf][k0 + q][wn + nt * 8 + g]);
          b[nt][1] = __float_as_uint(b_s[buf][k0 + q + 4][wn + nt * 8 + g]);
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) Mma<float>::mma(part[mt][nt], a[mt], b[nt], tf32);
      }
    } else {
#pragma unroll
      for (int k0 = 0; k0 < kChunk; k0 += 16)
        weight_grad::kstep16<T>(&a_s[buf][k0][0], kRow, &b_s[buf][k0][0], kRow, wm, wn, has_r, db_warp, part, part_db);
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] += part[mt][nt][e];
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_db[mt][e] += part_db[mt][e];
    }
    __syncthreads();  // the next iteration refills the buffer just read
  }
  cp_async_wait<0>();

  weight_grad::for_each_output(
      acc, acc_db, m0 + wm, j0 + wn, M, Mb, N, D, n, db_warp,
      [&](int64_t at, float v) {
        if (b_part == nullptr) db[at] = from_float<T>(v);
        else b_part[split * gates_b * ND + at] = v;
      },
      [&](int64_t at, float v0, float v1) {
        if (r_part == nullptr) store_pair(dr + at, v0, v1);
        else *reinterpret_cast<float2*>(r_part + split * M * ND + at) = make_float2(v0, v1);
      });
}

// out[c] = sum over p (in order) of partial[p][c]: dR and db from their K-split partials.
template <class T>
__global__ void sum_partials_kernel(const float* __restrict__ partial, T* __restrict__ out,
                                    int64_t parts, int64_t cols) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float s = 0.f;
  for (int64_t p = 0; p < parts; ++p) s += partial[p * cols + col];
  out[col] = from_float<T>(s);
}

// dR and db from dg (p.dg) and the states (p.states); `partials` holds
// weight_grad::scratch_floats(T * B, Gr, Gb, N, D) floats (sizes.h).
template <class T>
void launch_weight_grad(const BackwardParams& p, int gates_r, int gates_b, float* partials, cudaStream_t stream) {
  using namespace weight_grad;
  const int64_t rows = p.steps * p.batch, D = p.head_dim, N = p.heads;
  const int64_t splits = r_splits(rows, gates_r, N, D), per_split = (rows + splits - 1) / splits;
  float* b_part = splits > 1 ? partials : nullptr;
  float* r_part = splits > 1 ? partials + splits * gates_b * N * D : nullptr;
  const dim3 grid(unsigned((gates_b * D + kTile - 1) / kTile), unsigned((D + kTile - 1) / kTile), unsigned(N * splits));
  weight_grad_kernel<T><<<grid, kThreads, 0, stream>>>(
      static_cast<const T*>(p.dg), static_cast<const T*>(p.states), static_cast<T*>(p.dr), static_cast<T*>(p.dbias),
      r_part, b_part, p.steps, p.batch, per_split, N, D, gates_r, gates_b, p.allow_tf32);
  FLASHRNN_CHECK_LAUNCH("weight_grad_kernel");
  if (splits > 1) {
    const int64_t r_elems = gates_r * N * D * D, b_elems = gates_b * N * D;
    sum_partials_kernel<T><<<unsigned((r_elems + 255) / 256), 256, 0, stream>>>(r_part, static_cast<T*>(p.dr),
                                                                               splits, r_elems);
    FLASHRNN_CHECK_LAUNCH("sum_partials_kernel (dR)");
    sum_partials_kernel<T><<<unsigned((b_elems + 255) / 256), 256, 0, stream>>>(b_part, static_cast<T*>(p.dbias),
                                                                               splits, b_elems);
    FLASHRNN_CHECK_LAUNCH("sum_partials_kernel (db)");
  }
}

}  // namespace flashrnn
