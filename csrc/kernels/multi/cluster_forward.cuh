// Cluster forward (cluster_plan.h, sm_90): CTA (slice, batch group, head) owns 32 units of the
// head for 16 batch rows and runs all T steps; the CTAs of a cluster are the slices of one
// (head, batch group).
//
// Per step t: wait until h_{t-1} (hs, parity (t-1) % 2) has arrived from every CTA (the parity's
// mbarrier); warp (k-group, n-tile) multiplies it at its k-steps (kg, kg + 2, ...) by R's slice
// for its 8 units of every gate (m16n8k16, 16-bit types only: the plan turns fp32 away); the two
// k-groups' partial sums meet in shared memory (one CTA barrier); thread (row, unit pair) runs the
// cell, st.asyncs h_t into hs (parity t % 2) of every CTA of the cluster, writes the states and
// saved values and loads the next Wx.
// Reuse: a peer sends h_{t+2} (into parity t % 2 again) only after it has received h_{t+1} from
// this CTA, which sends it after its last read of h_t. h_T is not sent (nobody reads it), so no
// peer writes into a CTA that has finished.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "cluster_plan.h"
#include "pointwise.cuh"

namespace flashrnn {

template <class Cell, class T>
__global__ void __launch_bounds__(cluster::kThreads, 1)
    cluster_forward_kernel(const ForwardParams p, const cluster::Plan plan) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never picks this kernel below it
#else
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kU = cluster::kUnits, kRows = cluster::kRows;
  constexpr int kNt = cluster::kNtiles / cluster::kForwardNGroups;  // n-tiles per gate of one warp

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int64_t u0 = int64_t(blockIdx.x) * kU, b0 = int64_t(blockIdx.y) * kRows, n = blockIdx.z;
  const int valid_rows = int(B - b0 < kRows ? B - b0 : kRows);
  const int ksteps = int(D / M::kK), parity_bytes = kRows * plan.a_row;
  const T* r = static_cast<const T*>(p.r);

  unsigned char* hs = smem;  // [parity][row][a_row bytes]
  float* const red_base = reinterpret_cast<float*>(smem + plan.red_offset);  // [parity][k-group][row][gate * 32 + unit]
  __shared__ uint64_t arrived[2];  // per hs parity: h of every unit and valid row is in
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset);     // [k-step][gate][n-tile][lane]

  // R_k^T fragments of this CTA's units: n-tile j, element (kk, i) = R[k, n, u0 + 8 j + i, kk].
  for (int i = warp; i < ksteps * kGr * cluster::kNtiles; i += cluster::kWarps) {
    const int ks = i / (kGr * cluster::kNtiles), k = i / cluster::kNtiles % kGr, j = i % cluster::kNtiles;
    uint32_t f[2];
    M::load_b(f, r + ((k * N + n) * D + u0 + 8 * j) * D + int64_t(ks) * M::kK, D);
    rs[i * 32 + lane] = make_uint2(f[0], f[1]);
  }
  start_cluster_exchange(hs, 2 * parity_bytes, arrived);

  // Pointwise threads: (row, unit pair) = (tid / 16, tid % 16), units u0 + 2 * pair and + 1.
  const int prow = tid / (kU / 2), pair = tid % (kU / 2);
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  const uint32_t h_slot = smem_addr(hs + prow * plan.a_row + unit * int64_t(sizeof(T)));
  multi::ForwardPair<Cell, T> cell(p, pb, n, unit, pw);
  // h_t into parity t % 2 of every CTA of the cluster, at addresses from one mapa per rank made
  // up front (a mapa per store: LSTM 256 x 3 1.62 ms against 1.36). (Gathering 8 units into one
  // 16-byte store per lane, lanes spread over the ranks, measured slower: 1.98 against 1.61 us
  // per step.)
  const PeerWindows<cluster::kMaxSize> peers(smem_addr(&arrived[0]), plan.size);
  auto publish = [&](int64_t t) {
    uint32_t w[multi::kWordsPerPair<T>];
    cell.h_words(w);
    const uint32_t local = h_slot + uint32_t(t & 1) * parity_bytes, bar = smem_addr(&arrived[t & 1]);
#pragma unroll
    for (int rank = 0; rank < cluster::kMaxSize; ++rank) {
      if (rank >= plan.size) break;
      st_async_words(peers.at(rank, local), peers.at(rank, bar), w);
    }
  };
  const unsigned step_bytes = unsigned(valid_rows * D * int64_t(sizeof(T)));
  if (pw && steps > 0) {
    publish(0);
    cell.load_wx(0);
  }

  const int kg = warp % cluster::kForwardKGroups, ng = warp / cluster::kForwardKGroups;
  const uint32_t a_src = smem_addr(hs + (lane & 15) * plan.a_row) + (lane >> 4) * 16;
  const float clip = p.forward_clip_value;
  for (int64_t t = 1; t <= steps; ++t) {
    const int par = int((t - 1) & 1);
    if (tid == 0) mbar_arm(&arrived[par], step_bytes);
    mbar_wait(&arrived[par], unsigned((t - 1) >> 1) & 1u, cluster::kMaxPolls);  // h_{t-1} is here
    const uint32_t a_par = a_src + uint32_t(par) * parity_bytes;
    float* const red = red_base + (t & 1) * cluster::kForwardKGroups * kRows * plan.red_stride;
    float acc[kGr][kNt][4] = {};
    for (int ks = kg; ks < ksteps; ks += cluster::kForwardKGroups) {
      uint32_t a[4];
      ldmatrix_x4(a, a_par + ks * 32);
#pragma unroll
      for (int k = 0; k < kGr; ++k)
#pragma unroll
        for (int j = 0; j < kNt; ++j) {
          const uint2 v = rs[((ks * kGr + k) * cluster::kNtiles + ng * kNt + j) * 32 + lane];
          const uint32_t f[2] = {v.x, v.y};
          M::mma(acc[k][j], a, f, p.allow_tf32);
        }
    }
#pragma unroll
    for (int k = 0; k < kGr; ++k)
#pragma unroll
      for (int j = 0; j < kNt; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)  // rows g and g + 8
          *reinterpret_cast<float2*>(red + (kg * kRows + g + 8 * h) * plan.red_stride + k * kU +
                                     (ng * kNt + j) * 8 + 2 * q) = make_float2(acc[k][j][2 * h], acc[k][j][2 * h + 1]);
    __syncthreads();  // partial sums complete

    if (pw) {
      float2 rh_pair[kGr];
      multi::sum_gate_pairs<kGr, cluster::kForwardKGroups>(rh_pair, red, plan.red_stride, kU, 16, prow, pair);
      cell.template step<Math>(rh_pair, p.forward_clip, clip);
      if (t < steps) {
        publish(t);
        cell.load_wx(t);
      }
      cell.store();
    }
  }
#endif
}

}  // namespace flashrnn
