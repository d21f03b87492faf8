// Cluster backward (cluster_plan.h, sm_90): CTA (slice, batch group, head) owns 32 units of the
// head for 16 batch rows and runs the T steps in reverse.
//
// Per step t = T..1: the gradient carried into h_t needs (dg_{t+1} R) at this CTA's units, i.e.
// dg_{t+1} of every unit of the head: each CTA st.asyncs its units' dg (the first Gr gates,
// rounded to T as the single-CTA kernels multiply it) into the stage (parity t % 2) of every CTA
// of the cluster, counted by that parity's mbarrier. Warp (k-group, n-group) multiplies the
// stage at its k-steps by R^T restricted to its 16 units; the k-groups' partial sums meet in
// shared memory (one CTA barrier); thread (row, unit pair) runs the cell's backward and writes dg
// (which is also dWx and feeds dR/db, reduced after this kernel by weight_grad.cuh).
// Reuse: a peer sends dg_{t-2} (into parity t % 2 again) only after it has received dg_{t-1}
// from this CTA, which sends it after its last read of dg_t. Every CTA waits for dg_1 (the
// gradient of the initial states), so no peer writes into a CTA that has finished.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "cluster_plan.h"
#include "pointwise.cuh"

namespace flashrnn {

namespace cluster {
// A B fragment (k16 x n8; k8 for fp32) from elem(k, n), the element at row k, column n.
template <class T, class Elem>
__device__ __forceinline__ void fragment_from(uint32_t (&b)[2], int lane, Elem&& elem) {
  const int g = lane / 4, q = lane % 4;
  if constexpr (sizeof(T) == 4) {
    b[0] = __float_as_uint(elem(q, g));
    b[1] = __float_as_uint(elem(q + 4, g));
  } else {
    b[0] = Mma<T>::pack(elem(2 * q, g), elem(2 * q + 1, g));
    b[1] = Mma<T>::pack(elem(2 * q + 8, g), elem(2 * q + 9, g));
  }
}
}  // namespace cluster

template <class Cell, class T>
__global__ void __launch_bounds__(cluster::kThreads, 1)
    cluster_backward_kernel(const BackwardParams p, const cluster::Plan plan) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never picks this kernel below it
#else
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB;
  constexpr int kU = cluster::kUnits, kRows = cluster::kRows, kNt = cluster::kNtiles / cluster::kNGroups;
  constexpr int kChains = 2;  // accumulators per n-tile (alternating k-steps)

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int64_t u0 = int64_t(blockIdx.x) * kU, b0 = int64_t(blockIdx.y) * kRows, n = blockIdx.z;
  const int valid_rows = int(B - b0 < kRows ? B - b0 : kRows);
  const int ksteps = int(kGr * D / M::kK), parity_bytes = kRows * plan.a_row;
  const T* r = static_cast<const T*>(p.r);

  // The stage's K order: (unit, gate) for an even number of gates, where a thread's dg for its two
  // units and all gates is one contiguous 16- or 32-byte piece (one or two stores per peer);
  // (gate, unit) otherwise, where such a piece would be 12 or 24 bytes and its stores from a warp
  // would not be contiguous (GRU: 6.1 against 3.1 us per step). R^T's rows follow the stage.
  constexpr bool kUnitMajor = kGr % 2 == 0;
  auto k_index = [&](int64_t unit_i, int gate) { return kUnitMajor ? unit_i * kGr + gate : gate * D + unit_i; };
  unsigned char* stage = smem;  // [parity][row][K], plan.a_row bytes per row
  float* const red_base = reinterpret_cast<float*>(smem + plan.red_offset);  // [parity][k-group][row][unit]
  __shared__ uint64_t arrived[2];  // per stage parity: dg of every unit and valid row is in
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset);     // [k-step][n-tile][lane]

  // B fragments of R at k-step ks of K (output unit i, gate k in the stage's order), n-tile j of
  // this CTA's input units: element (kk, jj) = R[k, n, i, u0 + 8 j + jj] at K = ks * kK + kk.
  if (!p.recurrent_cut) {
    for (int i = warp; i < ksteps * cluster::kNtiles; i += cluster::kWarps) {
      const int ks = i / cluster::kNtiles, j = i % cluster::kNtiles;
      uint32_t f[2];
      cluster::fragment_from<T>(f, lane, [&](int kk, int jj) {
        const int64_t K = int64_t(ks) * M::kK + kk;
        const int64_t gate = kUnitMajor ? K % kGr : K / D, unit_i = kUnitMajor ? K / kGr : K % D;
        return r[((gate * N + n) * D + unit_i) * D + u0 + 8 * j + jj];
      });
      rs[i * 32 + lane] = make_uint2(f[0], f[1]);
    }
  }
  start_cluster_exchange(stage, 2 * parity_bytes, arrived);

  const int prow = tid / (kU / 2), pair = tid % (kU / 2);
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  const uint32_t dg_slot = smem_addr(stage + prow * plan.a_row + k_index(unit, 0) * int64_t(sizeof(T)));
  const int kg = warp % cluster::kKGroups, ng = warp / cluster::kKGroups;
  const uint32_t a_src = smem_addr(stage + (lane & 15) * plan.a_row) + (lane >> 4) * 16;

  // rec = (dg_s R)[prow, unit..unit+1] from the stage parity s % 2, once dg_s is in. Called by
  // all threads (it synchronizes).
  const unsigned step_bytes = unsigned(valid_rows * kGr * D * int64_t(sizeof(T)));
  auto recurrent = [&](int64_t s, float (&rec)[2]) {
    const int par = int(s & 1);
    if (tid == 0) mbar_arm(&arrived[par], step_bytes);
    mbar_wait(&arrived[par], unsigned((steps - s) >> 1) & 1u, cluster::kMaxPolls);
    const uint32_t a_par = a_src + uint32_t(par) * parity_bytes;
    float* const red = red_base + par * cluster::kKGroups * kRows * plan.red_stride;
    float acc[kNt][kChains][4] = {};
    for (int ks0 = kg; ks0 < ksteps; ks0 += kChains * cluster::kKGroups) {
#pragma unroll
      for (int c = 0; c < kChains; ++c) {
        const int ks = ks0 + c * cluster::kKGroups;
        if (ks >= ksteps) break;
        uint32_t a[4];
        ldmatrix_x4(a, a_par + ks * 32);
#pragma unroll
        for (int j = 0; j < kNt; ++j) {
          const uint2 v = rs[(ks * cluster::kNtiles + ng * kNt + j) * 32 + lane];
          const uint32_t f[2] = {v.x, v.y};
          M::mma(acc[j][c], a, f, p.allow_tf32);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kNt; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // rows g and g + 8
        *reinterpret_cast<float2*>(red + (kg * kRows + g + 8 * h) * plan.red_stride + (ng * kNt + j) * 8 + 2 * q) =
            make_float2(acc[j][0][2 * h] + acc[j][1][2 * h], acc[j][0][2 * h + 1] + acc[j][1][2 * h + 1]);
    __syncthreads();  // partial sums complete
    rec[0] = rec[1] = 0.f;
#pragma unroll
    for (int j = 0; j < cluster::kKGroups; ++j) {
      const float2 v = *reinterpret_cast<const float2*>(red + (j * kRows + prow) * plan.red_stride + 2 * pair);
      rec[0] += v.x;
      rec[1] += v.y;
    }
  };

  multi::BackwardPair<Cell, T> cell(p, pb, n, unit, pw);

  for (int64_t t = steps; t >= 1; --t) {
    float rec[2] = {0.f, 0.f};
    if (t < steps && !p.recurrent_cut) recurrent(t + 1, rec);
    if (pw) {
      float dg[2][kGb];
      cell.template step<Math>(rec, dg);
      if (!p.recurrent_cut) {
        const uint32_t local = dg_slot + uint32_t(t & 1) * parity_bytes, bar = smem_addr(&arrived[t & 1]);
        if constexpr (kUnitMajor) {
          float v[2 * kGr];  // in the stage's order: unit, then gate
#pragma unroll
          for (int u = 0; u < 2; ++u)
#pragma unroll
            for (int k = 0; k < kGr; ++k) v[u * kGr + k] = dg[u][k];
          uint32_t w[sizeof(T) == 4 ? 2 * kGr : kGr];
          pack_words<T>(v, w);
          for (int rank = 0; rank < plan.size; ++rank) st_async_words(peer_smem(local, rank), peer_smem(bar, rank), w);
        } else {
          uint32_t w[kGr][sizeof(T) == 4 ? 2 : 1];
#pragma unroll
          for (int k = 0; k < kGr; ++k) {
            const float v[2] = {dg[0][k], dg[1][k]};
            pack_words<T>(v, w[k]);
          }
          for (int rank = 0; rank < plan.size; ++rank) {
            const uint32_t remote = peer_smem(local, rank), remote_bar = peer_smem(bar, rank);
#pragma unroll
            for (int k = 0; k < kGr; ++k) st_async_words(remote + uint32_t(k * D * sizeof(T)), remote_bar, w[k]);
          }
        }
      }
      if (t > 1) cell.load_step(t - 1);
      cell.store_dg(t, dg);
    }
  }

  // dL/ds_0 = what reaches the initial states: carried paths + the gradient on states[:, 0].
  float rec[2] = {0.f, 0.f};
  if (steps >= 1 && !p.recurrent_cut) recurrent(1, rec);
  if (pw) cell.finish(rec, static_cast<T*>(p.dstates0));
#endif
}

}  // namespace flashrnn
