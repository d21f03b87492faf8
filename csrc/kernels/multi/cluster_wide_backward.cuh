// Wide cluster backward (cluster_plan.h make_wide_plan, sm_90, 16-bit types): CTA (slice, batch
// group, head) owns 48 units of the head for 16 batch rows and runs the T steps in reverse; the
// CTAs of a cluster are the slices of one (head, batch group), so a 768-wide head's dg_t never
// leaves the cluster.
//
// Per step t = T..1: the gradient carried into h_t needs (dg_{t+1} R) at this CTA's units. Each
// CTA st.asyncs its units' dg (the first Gr gates, in the stage's K order of cluster_backward.cuh)
// into the stage of every CTA of the cluster, counted by one mbarrier. Warp (k-group kg, tiles
// j0 .. j0 + kTiles - 1) multiplies the stage at its k-steps [kg * part, (kg + 1) * part) of
// K = Gr * D by R^T restricted to those 8-unit tiles (the first kRegKsteps of its k-steps'
// fragments in registers, the rest in shared memory: a 768-wide LSTM head's slice is 288 KB); the
// k-groups' partial sums meet in shared memory; thread (row, unit pair) runs the cell's backward
// and writes dg.
// The stage is single (two would not fit beside R): each CTA arrives on the cluster barrier once
// its warps are done reading dg_{t+1} and waits on it just before sending dg_t, so the barrier's
// round trip overlaps the partial sums and the cell. The partial-sum buffer is single too
// (cluster_plan.h wide_head_bytes).
// dR and db: where the device has room for more clusters (768 x 1 B = 16: one cluster of 16 CTAs
// on 132 SMs), grid rows beyond the batch groups (plan.worker_groups) run the L2 variant's
// workers (weight_grad/alongside.cuh) on the steps the recurrence has finished: each recurrent
// CTA sets its progress flag every kFlagSteps steps (a block barrier and a release; the workers'
// blocks are 1024 / B steps). Else weight_grad_kernel runs after this kernel.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "../weight_grad/alongside.cuh"
#include "cluster_backward.cuh"
#include "cluster_plan.h"
#include "cluster_wide.cuh"
#include "pointwise.cuh"

namespace flashrnn {

template <class Cell, class T>
__global__ void __launch_bounds__(cluster::kWideThreads, 1)
    cluster_wide_backward_kernel(const BackwardParams p, const cluster::Plan plan, unsigned* flags) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  static_assert(sizeof(T) == 2, "the wide plan takes 16-bit types");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the launcher never picks this kernel below it
#else
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kGb = Cell::kGatesB, kU = cluster::kWideUnits, kRows = cluster::kRows;
  constexpr int kRegKsteps = cluster::wide_register_ksteps(true, kGr);
  constexpr int kTiles = cluster::kWideBwTiles, kKGroups = cluster::wide_kgroups(true);
  constexpr int kChains = kTiles == 1 ? 2 : 1;  // accumulators per tile (alternate k-steps)

  constexpr int kFlagSteps = 8;

  extern __shared__ __align__(128) unsigned char smem[];
  if (int(blockIdx.y) >= plan.groups) {  // a CTA of dR and db alongside
    if (threadIdx.x >= alongside::kThreads) return;
    const int worker = (int(blockIdx.z) * plan.worker_groups + int(blockIdx.y) - plan.groups) * plan.size + int(blockIdx.x);
    alongside::weight_grad_alongside<T>(p, kGr, kGb, worker, plan.worker_groups * plan.heads * plan.size, flags,
                                        plan.heads * plan.groups * plan.size, smem);
    return;
  }
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int64_t u0 = int64_t(blockIdx.x) * kU, b0 = int64_t(blockIdx.y) * kRows, n = blockIdx.z;
  const int valid_rows = int(B - b0 < kRows ? B - b0 : kRows);
  const int ksteps = int(kGr * D / M::kK);
  const T* r = static_cast<const T*>(p.r);
  const bool recurrent = !p.recurrent_cut;

  // The stage's K order as in cluster_backward.cuh: (unit, gate) for an even gate count, else (gate, unit).
  constexpr bool kUnitMajor = kGr % 2 == 0;
  auto k_index = [&](int64_t unit_i, int gate) { return kUnitMajor ? unit_i * kGr + gate : gate * D + unit_i; };
  // This warp's k-steps [k0, k0 + count) and tiles j0 + c; B fragment of tile j at k-step ks:
  // element (kk, jj) = R[k, n, i, u0 + 8 j + jj] for (unit i, gate k) at K = 16 ks + kk.
  const int kg = warp / (cluster::kWideTiles / kTiles), j0 = warp % (cluster::kWideTiles / kTiles) * kTiles;
  const cluster::WideSlice slice(ksteps, true, kg, kRegKsteps);
  const int k0 = slice.first, count = slice.count;
  uint32_t rreg[kRegKsteps > 0 ? kRegKsteps : 1][kTiles][2];  // k-steps k0 .. k0 + kRegKsteps - 1
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset) + warp * slice.in_smem * kTiles * 32;  // [warp][k-step - kRegKsteps][tile][lane]
  auto load_fragment = [&](int ks, int j, uint32_t (&f)[2]) {
    cluster::fragment_from<T>(f, lane, [&](int kk, int jj) {
      const int64_t K = int64_t(ks) * M::kK + kk;
      const int64_t gate = kUnitMajor ? K % kGr : K / D, unit_i = kUnitMajor ? K / kGr : K % D;
      return r[((gate * N + n) * D + unit_i) * D + u0 + 8 * j + jj];
    });
  };
#pragma unroll
  for (int i = 0; i < kRegKsteps; ++i)
#pragma unroll
    for (int c = 0; c < kTiles; ++c) {
      rreg[i][c][0] = rreg[i][c][1] = 0u;
      if (recurrent && i < count) load_fragment(k0 + i, j0 + c, rreg[i][c]);
    }
  for (int i = kRegKsteps; i < count && recurrent; ++i)
#pragma unroll
    for (int c = 0; c < kTiles; ++c) {
      uint32_t f[2];
      load_fragment(k0 + i, j0 + c, f);
      rs[((i - kRegKsteps) * kTiles + c) * 32 + lane] = make_uint2(f[0], f[1]);
    }

  unsigned char* stage = smem;  // [row][K], plan.a_row bytes per row
  float* const red = reinterpret_cast<float*>(smem + plan.red_offset);  // [k-group][row][unit]
  __shared__ uint64_t arrived[2];  // [0]: dg of every unit and valid row is in the stage ([1] unused)
  __shared__ uint32_t peer_base[cluster::kMaxSize];
  cluster::fill_peer_bases(peer_base, smem, plan.size);
  start_cluster_exchange(stage, kRows * plan.a_row, arrived);

  const int prow = tid / (kU / 2), pair = tid % (kU / 2);
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  const uint32_t dg_slot = uint32_t((prow * plan.a_row) + k_index(unit, 0) * int64_t(sizeof(T)));  // offset in the window
  const uint32_t bar_offset = smem_addr(&arrived[0]) - smem_addr(smem);
  const uint32_t a_src = smem_addr(stage + (lane & 15) * plan.a_row) + (lane >> 4) * 16 + k0 * 32;

  // rec = (dg_s R)[prow, unit..unit+1] once dg_s is in the stage (the phase (T - s) of arrived).
  // Called by all threads: it synchronizes and arrives on the cluster barrier after its reads.
  const unsigned step_bytes = unsigned(valid_rows * kGr * D * int64_t(sizeof(T)));
  auto recurrent_part = [&](int64_t s, float (&rec)[2]) {
    if (tid == 0) mbar_arm(&arrived[0], step_bytes);
    mbar_wait(&arrived[0], unsigned(steps - s) & 1u, cluster::kMaxPolls);
    float acc[kTiles][kChains][4] = {};
    cluster::wide_products<M, kRegKsteps, kTiles, kChains>(acc, rreg, rs, a_src, count, lane);
#pragma unroll
    for (int c = 0; c < kTiles; ++c)
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows g and g + 8
        float2 v = make_float2(0.f, 0.f);
#pragma unroll
        for (int x = 0; x < kChains; ++x) {
          v.x += acc[c][x][2 * h];
          v.y += acc[c][x][2 * h + 1];
        }
        *reinterpret_cast<float2*>(red + (kg * kRows + g + 8 * h) * plan.red_stride + 8 * (j0 + c) + 2 * q) = v;
      }
    // This CTA's warps are done with the stage once all have arrived: the sums just stored used
    // every value it read. Relaxed: a release would wait for the thread's global loads in flight
    // (768 x 1 B = 64 fp16 backward 9.20 -> 8.78 ms, H100).
    cluster_arrive_relaxed();
    __syncthreads();  // partial sums complete
    rec[0] = rec[1] = 0.f;
#pragma unroll
    for (int s2 = 0; s2 < kKGroups; ++s2) {
      const float2 v = *reinterpret_cast<const float2*>(red + (s2 * kRows + prow) * plan.red_stride + 2 * pair);
      rec[0] += v.x;
      rec[1] += v.y;
    }
  };
  // dg_t into the stage of every CTA of the cluster, in the stage's K order.
  const int first_rank = int((cluster_rank() + warp) % plan.size);
  auto publish = [&](const float (&dg)[2][kGb]) {
    if constexpr (kUnitMajor) {
      float v[2 * kGr];  // unit, then gate
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int k = 0; k < kGr; ++k) v[u * kGr + k] = dg[u][k];
      uint32_t w[kGr];
      pack_words<T>(v, w);
      cluster::send_to_all(peer_base, plan.size, first_rank, dg_slot, bar_offset, w);
    } else {
      uint32_t w[kGr][1];
#pragma unroll
      for (int k = 0; k < kGr; ++k) {
        const float v[2] = {dg[0][k], dg[1][k]};
        pack_words<T>(v, w[k]);
      }
#pragma unroll
      for (int k = 0; k < kGr; ++k)
        cluster::send_to_all(peer_base, plan.size, first_rank, dg_slot + uint32_t(k * D * sizeof(T)), bar_offset, w[k]);
    }
  };

  multi::BackwardPair<Cell, T> cell(p, pb, n, unit, pw);

  for (int64_t t = steps; t >= 1; --t) {
    float rec[2] = {0.f, 0.f};
    const bool waited = t < steps && recurrent;
    if (waited) recurrent_part(t + 1, rec);
    float dg[2][kGb];
    if (pw) cell.template step<Math>(rec, dg);
    if (waited) cluster_wait();  // every CTA is done reading dg_{t+1}: the stage may be overwritten
    if (pw) {
      if (recurrent) publish(dg);
      if (t > 1) cell.load_step(t - 1);
      cell.store_dg(t, dg);
    }
    if (plan.worker_groups > 0 && ((steps - t + 1) % kFlagSteps == 0 || t == 1))  // dg_t .. dg_T are out
      multi::release_flag(multi::flag_at(flags, (n * plan.groups + blockIdx.y) * plan.size + blockIdx.x),
                          unsigned(steps - t + 1));
  }

  // dL/ds_0 = what reaches the initial states: carried paths + the gradient on states[:, 0].
  float rec[2] = {0.f, 0.f};
  if (steps >= 1 && recurrent) {
    recurrent_part(1, rec);
    cluster_wait();  // (pairs the arrive; every dg_1 store into this CTA has landed: it waited for them)
  }
  if (pw) cell.finish(rec, static_cast<T*>(p.dstates0));
#endif
}

}  // namespace flashrnn
