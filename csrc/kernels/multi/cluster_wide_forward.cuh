// Wide cluster forward (cluster_plan.h make_wide_plan, sm_90, 16-bit types): CTA (slice, batch
// group, head) owns 48 units of the head for 16 batch rows and runs all T steps; the CTAs of a
// cluster are the slices of one (head, batch group), so a 768-wide head runs in one cluster of 16
// and its h_t never leaves the cluster (the L2 variant's flag round trip cost ~1.8 us per step).
//
// R's slice of a 768-wide LSTM head is 288 KB per CTA, more than shared memory: each warp keeps
// the first kRegKsteps of its k-steps' B fragments in registers and reads the rest from shared
// memory. Warp (k-group kg, tile j) multiplies h_{t-1} at k-steps [kg * half, (kg + 1) * half) by
// the 8 units u0 + 8 j .. + 8 of every gate (m16n8k16); both k-groups' partial sums meet in shared
// memory (one CTA barrier); thread (row, unit pair) runs the cell and st.asyncs its h_t word into
// hs (parity t % 2) of every CTA of the cluster, as in cluster_forward.cuh, whose reuse argument
// holds here too (and covers the single partial-sum buffer: cluster_plan.h wide_head_bytes).
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "cluster_plan.h"
#include "cluster_wide.cuh"
#include "pointwise.cuh"

namespace flashrnn {

template <class Cell, class T>
__global__ void __launch_bounds__(cluster::kWideThreads, 1)
    cluster_wide_forward_kernel(const ForwardParams p, const cluster::Plan plan) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never picks this kernel below it
#else
  static_assert(sizeof(T) == 2, "the wide plan takes 16-bit types");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kU = cluster::kWideUnits, kRows = cluster::kRows;
  constexpr int kRegKsteps = cluster::wide_register_ksteps(false, kGr);

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int64_t u0 = int64_t(blockIdx.x) * kU, b0 = int64_t(blockIdx.y) * kRows, n = blockIdx.z;
  const int valid_rows = int(B - b0 < kRows ? B - b0 : kRows);
  const int parity_bytes = kRows * plan.a_row;
  const T* r = static_cast<const T*>(p.r);

  // This warp's k-steps [k0, k0 + count) and 8-unit tile j; B fragments of tile j of gate k at
  // k-step ks: element (kk, i) = R[k, n, u0 + 8 j + i, 16 ks + kk].
  constexpr int kKGroups = cluster::wide_kgroups(false);
  const int kg = warp / cluster::kWideTiles, j = warp % cluster::kWideTiles;
  const cluster::WideSlice slice(int(D / M::kK), false, kg, kRegKsteps);
  const int k0 = slice.first, count = slice.count;
  uint32_t rreg[kRegKsteps > 0 ? kRegKsteps : 1][kGr][2];  // k-steps k0 .. k0 + kRegKsteps - 1, every gate
  auto load_fragment = [&](int ks, int k, uint32_t (&f)[2]) {
    M::load_b(f, r + ((k * N + n) * D + u0 + 8 * j) * D + int64_t(ks) * M::kK, D);
  };
#pragma unroll
  for (int i = 0; i < kRegKsteps; ++i)
#pragma unroll
    for (int k = 0; k < kGr; ++k) {
      rreg[i][k][0] = rreg[i][k][1] = 0u;
      if (i < count) load_fragment(k0 + i, k, rreg[i][k]);
    }
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset) + warp * slice.in_smem * kGr * 32;  // [warp][k-step - kRegKsteps][gate][lane]
  for (int i = kRegKsteps; i < count; ++i)
#pragma unroll
    for (int k = 0; k < kGr; ++k) {
      uint32_t f[2];
      load_fragment(k0 + i, k, f);
      rs[((i - kRegKsteps) * kGr + k) * 32 + lane] = make_uint2(f[0], f[1]);
    }

  unsigned char* hs = smem;  // [parity][row][a_row bytes]
  float* const red = reinterpret_cast<float*>(smem + plan.red_offset);  // [k-group][row][gate * 48 + unit]
  __shared__ uint64_t arrived[2];  // per hs parity: h of every unit and valid row is in
  __shared__ uint32_t peer_base[cluster::kMaxSize];
  cluster::fill_peer_bases(peer_base, smem, plan.size);
  start_cluster_exchange(hs, 2 * parity_bytes, arrived);

  // Pointwise threads: (row, unit pair) = (tid / 24, tid % 24), units u0 + 2 * pair and + 1.
  const int prow = tid / (kU / 2), pair = tid % (kU / 2);
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  const uint32_t h_slot = uint32_t(prow * plan.a_row + unit * int64_t(sizeof(T)));  // offset in the window
  const uint32_t bar_offset = smem_addr(&arrived[0]) - smem_addr(smem);
  multi::ForwardPair<Cell, T> cell(p, pb, n, unit, pw);
  const int first_rank = int((cluster_rank() + warp) % plan.size);
  auto publish = [&](int64_t t) {
    uint32_t w[multi::kWordsPerPair<T>];
    cell.h_words(w);
    cluster::send_to_all(peer_base, plan.size, first_rank, h_slot + uint32_t(t & 1) * parity_bytes,
                         bar_offset + uint32_t(t & 1) * 8, w);
  };
  const unsigned step_bytes = unsigned(valid_rows * D * int64_t(sizeof(T)));
  if (pw && steps > 0) {
    publish(0);
    cell.load_wx(0);
  }

  const uint32_t a_src = smem_addr(hs + (lane & 15) * plan.a_row) + (lane >> 4) * 16 + k0 * 32;
  const float clip = p.forward_clip_value;
  for (int64_t t = 1; t <= steps; ++t) {
    const int par = int((t - 1) & 1);
    if (tid == 0) mbar_arm(&arrived[par], step_bytes);
    mbar_wait(&arrived[par], unsigned((t - 1) >> 1) & 1u, cluster::kMaxPolls);  // h_{t-1} is here
    const uint32_t a_par = a_src + uint32_t(par) * parity_bytes;
    float acc[kGr][1][4] = {};
    cluster::wide_products<M, kRegKsteps, kGr, 1>(acc, rreg, rs, a_par, count, lane);
#pragma unroll
    for (int k = 0; k < kGr; ++k)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // rows g and g + 8
        *reinterpret_cast<float2*>(red + (kg * kRows + g + 8 * h) * plan.red_stride + k * kU + 8 * j + 2 * q) =
            make_float2(acc[k][0][2 * h], acc[k][0][2 * h + 1]);
    __syncthreads();  // partial sums complete

    if (pw) {
      float2 rh_pair[kGr];
      multi::sum_gate_pairs<kGr, kKGroups>(rh_pair, red, plan.red_stride, kU, 16, prow, pair);
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
