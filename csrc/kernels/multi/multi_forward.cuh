// Multi-CTA fused forward (plan.h): CTA (slice, batch group, head) owns 8 units of the head for
// 16 * mt batch rows and runs all T steps; the CTAs of a (head, batch group) exchange h_t via L2.
//
// Exchange: the pointwise threads write h_t into a double buffer in L2 (parity t % 2), the CTA
// meets at a barrier and its last thread sets the CTA's progress flag to t + 1 (release); readers
// poll the flags of their (head, batch group) with acquire loads and copy the rows of h_t with
// cp.async.cg. Releases, polls and multicast issues are done by the block's last threads, past the
// pointwise rows: a release or acquire waits for the thread's own loads in flight (the next
// step's Wx from HBM; 768 x 1 bf16 B = 16 fwbw 8.1 -> 7.8 ms on the H100). The buffer can be
// reused two steps later: a CTA writes h_{t+1} only after every CTA has published h_t, which each
// did after copying h_{t-1}. (The first version stored each word with its step tag and polled
// the data itself: 2x the bytes, and an exchange microbenchmark measured 3.23 against 2.58 us per
// step for flags at 96 CTAs x 64 words.)
// On sm_90 the CTAs of a (head, batch group) also form clusters of up to 16 (plan.cluster): each
// CTA of a cluster copies a share of the rows and multicasts it into every CTA of the cluster
// (cp.async.bulk, counted by an mbarrier), so a row leaves L2 once per cluster, not once per CTA
// (768 x 1 bf16 forward 3.9 -> 2.9 ms, B = 64 fp16 6.9 -> 4.9). hs can be overwritten then: every
// CTA of the cluster has published h_{t-1}, after its last read of h_{t-2}.
// Per step: wait for the flags and copy h_{t-1} into shared memory; warp (m-tile, k-group)
// multiplies its rows by its k-steps of every gate's 8-unit slice of R (m16n8k16; 3xTF32 for
// fp32); the k-groups' partial sums meet in shared memory; 4 threads per batch row run the cell
// on 2 units each and load Wx for the next step; h_t is published; the states and saved values
// are written.
#pragma once

#include "../../common/check.h"
#include "../../common/params.h"
#include "../cells/all_cells.cuh"
#include "../common/device.cuh"
#include "cluster_forward.cuh"
#include "cluster_launch.h"
#include "cluster_wide_forward.cuh"
#include "cooperative.cuh"
#include "pointwise.cuh"

namespace flashrnn {

template <class Cell, class T>
__global__ void __launch_bounds__(multi::kThreads, multi::kMaxCtasPerSm)
    multi_forward_kernel(const ForwardParams p, const multi::Plan plan) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR, kThreads = multi::kThreads;
  constexpr int kRed = multi::red_stride(kGr);

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int rows = plan.rows(), mt_count = plan.mt, k_groups = multi::kWarps / mt_count;
  const int group = plan.group0 + int(blockIdx.y);  // this launch's wave starts at (group0, head0)
  const int64_t u0 = int64_t(blockIdx.x) * multi::kUnits, b0 = int64_t(group) * rows, n = plan.head0 + blockIdx.z;
  const int valid_rows = int(B - b0 < rows ? B - b0 : rows);
  const int ksteps = int(D / M::kK);
  const T* r = static_cast<const T*>(p.r);

  unsigned char* hs = smem;  // h_{t-1} rows, plan.a_row bytes each
  float* red = reinterpret_cast<float*>(smem + plan.red_offset);  // [k-group][row][gate * 8 + unit]
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset);     // [k-step][gate][lane]

  // R_k^T fragments of this CTA's units: element (j, i) = R[k, n, u0 + i, j].
  auto r_fragment = [&](int ks, int k, uint32_t (&f)[2]) {
    M::load_b(f, r + ((k * N + n) * D + u0) * D + int64_t(ks) * M::kK, D);
  };
  for (int i = warp; i < plan.resident * kGr; i += multi::kWarps) {
    uint32_t f[2];
    r_fragment(i / kGr, i % kGr, f);
    rs[i * 32 + lane] = make_uint2(f[0], f[1]);
  }
  for (int i = tid; i < rows * plan.a_row / 4; i += kThreads) reinterpret_cast<uint32_t*>(hs)[i] = 0u;
  __syncthreads();  // rows past the batch stay zero; the others are overwritten every step
  __shared__ uint64_t staged;  // multicast staging: h_{t-1}'s rows have arrived
  const bool multicast = plan.cluster > 1;
  if (multicast) multi::start_multicast(&staged);

  // The exchange: h rows [parity][head][padded batch row][words] (32-bit words; a row starts at
  // exchange(par, b)), then one progress flag per CTA [head][group][slice].
  const int64_t words = D * int64_t(sizeof(T)) / 4;
  uint32_t* xdata = reinterpret_cast<uint32_t*>(p.workspace);
  unsigned* group_flags = reinterpret_cast<unsigned*>(p.workspace) +
                          multi::exchange_words(B, N, D, sizeof(T)) + (n * plan.groups + group) * plan.slices;
  auto exchange = [&](int par, int64_t b) { return xdata + ((par * N + n) * plan.padded_batch() + b) * words; };

  // Pointwise threads: 4 per batch row, each owning units u0 + 2 * pair and + 1.
  const int prow = tid / 4, pair = tid % 4;
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  multi::ForwardPair<Cell, T> cell(p, pb, n, unit, pw);
  auto publish = [&](int64_t t) {  // h_t into parity t % 2 (pointwise threads), then the flag t + 1
    if (pw) {
      uint32_t w[multi::kWordsPerPair<T>];
      cell.h_words(w);
      uint32_t* dst = exchange(int(t & 1), pb) + unit * int64_t(sizeof(T)) / 4;
#pragma unroll
      for (int i = 0; i < multi::kWordsPerPair<T>; ++i) dst[i] = w[i];
    }
    multi::release_flag(group_flags + blockIdx.x, unsigned(t + 1));
  };
  if (pw && steps > 0) cell.load_wx(0);
  if (steps > 0) publish(0);

  const int mt = warp % mt_count, kg = warp / mt_count;
  const uint32_t a_src = smem_addr(hs + (mt * 16 + (lane & 15)) * plan.a_row) + (lane >> 4) * 16;
  const float clip = p.forward_clip_value;
  for (int64_t t = 1; t <= steps; ++t) {
    // Wait until every CTA of this (head, group) has published h_{t-1} (acquire polls), then copy
    // its valid rows into hs through L2 (cp.async.cg: no stale L1 line of the parity's use two
    // steps ago). A CTA publishes h_{t+1} into this parity again only after every CTA has
    // published h_t, i.e. after every CTA's copy of h_{t-1}.
    multi::wait_for_flags(group_flags, plan.slices, unsigned(t));  // every CTA's h_{t-1} is visible
    const multi::Pieces from{reinterpret_cast<const unsigned char*>(exchange(int((t - 1) & 1), b0)), words * 4,
                             valid_rows, unsigned(words * 4)};
    if (multicast) {  // every CTA of the cluster has published h_{t-1}: none still reads hs
      multi::multicast_pieces(hs, plan.a_row, from, plan.cluster, &staged, multi::kWarps - 1);
      mbar_wait(&staged, unsigned(t - 1) & 1u, cluster::kMaxPolls);
    } else {
      multi::copy_pieces(hs, plan.a_row, from);
      cp_async_wait<0>();
    }
    __syncthreads();  // hs holds h_{t-1}; red is free (the last step's pointwise reads are done)

    // The k-steps whose R fragments sit in shared memory, then those read from L2 (two loops,
    // so that the resident one carries no address arithmetic of the other).
    float acc[kGr][4] = {};
    const int resident_end = plan.resident < ksteps ? plan.resident : ksteps;
    int ks = kg;
    for (; ks < resident_end; ks += k_groups) {
      uint32_t a[4];
      ldmatrix_x4(a, a_src + ks * 32);
#pragma unroll
      for (int k = 0; k < kGr; ++k) {
        const uint2 v = rs[(ks * kGr + k) * 32 + lane];
        const uint32_t f[2] = {v.x, v.y};
        M::mma(acc[k], a, f, p.allow_tf32);
      }
    }
    for (; ks < ksteps; ks += k_groups) {
      uint32_t a[4];
      ldmatrix_x4(a, a_src + ks * 32);
#pragma unroll
      for (int k = 0; k < kGr; ++k) {
        uint32_t f[2];
        r_fragment(ks, k, f);
        M::mma(acc[k], a, f, p.allow_tf32);
      }
    }
#pragma unroll
    for (int k = 0; k < kGr; ++k)
#pragma unroll
      for (int h = 0; h < 2; ++h)  // rows g and g + 8
        *reinterpret_cast<float2*>(red + (kg * rows + mt * 16 + g + 8 * h) * kRed + k * 8 + 2 * q) =
            make_float2(acc[k][2 * h], acc[k][2 * h + 1]);
    __syncthreads();  // partial sums complete; hs may be refilled

    if (pw) {
      float2 rh_pair[kGr];  // R h_{t-1} at this thread's two units, summed over the k-groups
#pragma unroll
      for (int k = 0; k < kGr; ++k) rh_pair[k] = make_float2(0.f, 0.f);
#pragma unroll
      for (int j = 0; j < multi::kWarps; ++j) {  // all loads issued together
        if (j >= k_groups) break;
#pragma unroll
        for (int k = 0; k < kGr; ++k) {
          const float2 v = *reinterpret_cast<const float2*>(red + (j * rows + prow) * kRed + k * 8 + 2 * pair);
          rh_pair[k].x += v.x;
          rh_pair[k].y += v.y;
        }
      }
      cell.template step<Math>(rh_pair, p.forward_clip, clip);
      if (t < steps) cell.load_wx(t);  // (loaded after the publication instead: 768 x 1 3.9 -> 4.4 ms)
    }
    if (t < steps) publish(t);  // (h_T is not exchanged: nobody reads it)
    if (pw) cell.store();
  }
  if (multicast) cluster_sync();  // no CTA leaves while its copies may still be landing in a peer
}

// The cluster variant where it runs (sm_90, the head in at most 16 CTAs of 32 units, R's slice in
// shared memory), else its wide form (16-bit, at most 16 CTAs of 48 units, R partly in registers),
// else the L2 variant.
template <class Cell, class T>
void launch_multi_forward(const ForwardParams& p, const DeviceLimits& device, cudaStream_t stream) {
  cluster::Plan cplan;
  if (cluster::make_plan(cplan, false, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                         device.smem_per_block) == nullptr &&
      cluster::launch_clusters(cluster_forward_kernel<Cell, T>, cplan, device, stream, "cluster_forward_kernel", p,
                               cplan))
    return;
  multi::Plan plan;
  const char* why = multi::make_plan(plan, false, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                                     device.smem_per_block, device.smem_per_sm, device.sm_count);
  if constexpr (sizeof(T) == 2) {
    if (cluster::wide_takes(cplan, false, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                            device.smem_per_block, why == nullptr ? &plan : nullptr, device.sm_count) &&
        cluster::launch_clusters(cluster_wide_forward_kernel<Cell, T>, cplan, device, stream,
                                 "cluster_wide_forward_kernel", p, cplan))
      return;
  }
  FLASHRNN_CHECK(why == nullptr, "multi-CTA forward: " << why);
  FLASHRNN_CUDA_CHECK(cudaMemsetAsync(  // the progress flags (the h rows are written before they are read)
      p.workspace + multi::exchange_words(p.batch, p.heads, p.head_dim, sizeof(T)), 0,
      sizeof(unsigned) * multi::flag_words(p.batch, p.heads, p.head_dim), stream));
  const char* name = "multi_forward_kernel";
  multi::launch_cooperative(multi_forward_kernel<Cell, T>,
                            multi::launch_plan(multi_forward_kernel<Cell, T>, plan, device, name), stream, name, p);
}

}  // namespace flashrnn
