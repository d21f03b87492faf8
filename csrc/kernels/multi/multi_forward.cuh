// Multi-CTA fused forward (plan.h): CTA (slice, batch group, head) owns 8 units of the head for
// 16 * mt batch rows and runs all T steps; the CTAs of a (head, batch group) exchange h_t via L2.
//
// Exchange: the pointwise threads write h_t into a double buffer in L2 (parity t % 2; a block of
// 8 units per CTA), the CTA meets at a barrier and its last thread sets the CTA's progress flag to
// t + 1 (release); readers poll the flags of their (head, batch group) with acquire loads and copy
// the blocks of h_t with cp.async.cg. Releases, polls and multicast issues are done by the
// block's last threads, past the pointwise rows: a release or acquire waits for the thread's own
// loads in flight (the next step's Wx from HBM; 768 x 1 bf16 B = 16 fwbw 8.1 -> 7.8 ms on the H100). The buffer can be
// reused two steps later: a CTA writes h_{t+1} only after every CTA has published h_t, which each
// did after copying h_{t-1}. (The first version stored each word with its step tag and polled
// the data itself: 2x the bytes, and an exchange microbenchmark measured 3.23 against 2.58 us per
// step for flags at 96 CTAs x 64 words.)
// On sm_90 the CTAs of a (head, batch group) also form clusters of up to 16 (plan.cluster): each
// CTA of a cluster copies a share of the blocks and multicasts it into every CTA of the cluster
// (cp.async.bulk, counted by an mbarrier), so a block leaves L2 once per cluster, not once per CTA
// (768 x 1 bf16 forward 3.9 -> 2.9 ms, B = 64 fp16 6.9 -> 4.9). Its share is a range of
// consecutive blocks, copied in pieces of plan.copy_blocks blocks, each as soon as the flags of its
// own blocks show them (multi::multicast_ranges), not after all flags; so hs is guarded by a split
// cluster barrier instead: each CTA arrives once its product has read hs, and waits before its
// next copies. (plan.copy_blocks = 0: each CTA waits for every flag, then copies its share; hs can
// be overwritten then without the barrier: every CTA of the cluster has published h_{t-1}, after
// its last read of h_{t-2}.)
// Tagged (16-bit on sm_90 with copies in ranges, heads up to 768 units as a rule: switches.h
// tagged_wanted; where its twice larger stage costs no extra wave): each 32-bit word of h travels
// in an 8-byte word beside its tag, t + 1 (cooperative.cuh store_tagged), written with one relaxed
// store; the issuers poll the words of their range themselves (wait_for_tags) and multicast them,
// tags and all, into hs, and the A fragments are read from the data halves. No publish barrier,
// release or flag: the chain from h_t computed to h_t staged in every CTA loses the release's
// MEMBAR and one L2 trip (768 x 1 bf16 B = 16 forward 2.33 -> 2.01-2.04 ms on the H100; 1024 x 1
// measured slower, 2.79 -> 3.16; perf-log.md, twentieth session). The parity reuse holds as
// above: a CTA's h_{t+1} depends on h_t of every CTA, each computed after that CTA's copies of
// h_{t-1} had landed.
// Per step: wait for the flags and copy h_{t-1} into shared memory; warp (m-tile, k-group)
// multiplies its rows by its k-steps of every gate's 8-unit slice of R (m16n8k16; 3xTF32 for
// fp32; the R fragments of its first multi::register_steps k-steps held in registers for the whole
// sequence, the next plan.resident k-steps' in shared memory, the rest read from L2); the
// k-groups' partial sums meet in shared memory; 4 threads per batch row run the cell on 2 units
// each and load Wx for the next step; h_t is published; the states and saved values are written.
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

// kTagged (16-bit, clusters with copies in ranges, plan.tagged): h travels in tagged words
// (cooperative.cuh store_tagged), so the pointwise threads publish with plain stores, no barrier,
// release or flag, and the issuers poll the words themselves before their copies.
template <class Cell, class T, bool kTagged = false>
__global__ void __launch_bounds__(multi::kThreads, multi::kMaxCtasPerSm)
    multi_forward_kernel(const ForwardParams p, const multi::Plan plan) {
  static_assert(cells::Cell<Cell>, "see cells/elman.cuh for what a cell must define");
  using M = Mma<T>;
  using Math = MathFor<T>;
  constexpr int kGr = Cell::kGatesR;
  constexpr int kRed = multi::red_stride(kGr);
  static_assert(!kTagged || sizeof(T) == 2, "tagged words carry a pair of 16-bit units");
  constexpr int kElementBytes = kTagged ? multi::kTaggedElementBytes : int(sizeof(T));  // in the exchange and hs
  constexpr int kUnitBytes = multi::kUnits * kElementBytes;                                // a block's row (8 units)

  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t B = p.batch, steps = p.steps, N = p.heads, D = p.head_dim;
  const int rows = plan.rows(), mt_count = plan.mt, k_groups = multi::kWarps / mt_count;
  const int group = plan.group0 + int(blockIdx.y);  // this launch's wave starts at (group0, head0)
  const int64_t u0 = int64_t(blockIdx.x) * multi::kUnits, b0 = int64_t(group) * rows, n = plan.head0 + blockIdx.z;
  const int valid_rows = int(B - b0 < rows ? B - b0 : rows);
  const int ksteps = int(D / M::kK);
  const int mt = warp % mt_count, kg = warp / mt_count;
  const T* r = static_cast<const T*>(p.r);

  // h travels in blocks, one per slice (the CTA that computes it): [row][8 units], block_bytes
  // each, in the exchange at [parity t % 2][head][group][slice] and in hs at [slice]. K runs over
  // the units in order, so R's fragments are those of the plain layout; a k-step's 32 bytes of a
  // row are two blocks' rows (16-bit) or one (fp32).
  const int block_bytes = rows * kUnitBytes;
  unsigned char* hs = smem;  // h_{t-1}: [slice][row][8 units]
  float* red = reinterpret_cast<float*>(smem + plan.red_offset);  // [k-group][row][gate * 8 + unit]
  uint2* rs = reinterpret_cast<uint2*>(smem + plan.r_offset);     // [k-step - reg_ksteps][gate][lane]

  // R_k^T fragments of this CTA's units: element (j, i) = R[k, n, u0 + i, j].
  auto r_fragment = [&](int ks, int k, uint32_t (&f)[2]) {
    M::load_b(f, r + ((k * N + n) * D + u0) * D + int64_t(ks) * M::kK, D);
  };
  for (int i = warp; i < plan.resident * kGr; i += multi::kWarps) {
    uint32_t f[2];
    r_fragment(plan.reg_ksteps + i / kGr, i % kGr, f);
    rs[i * 32 + lane] = make_uint2(f[0], f[1]);
  }
  // The warp's k-steps kg + i * k_groups, i < kRegSteps (those below reg_ksteps), in registers
  // (the whole of R's slice at 768 x 1 in 16-bit: its 48 KB per step no longer cross shared memory).
  constexpr int kRegSteps = multi::register_steps(sizeof(T));
  uint32_t rr[kRegSteps][kGr][2];
#pragma unroll
  for (int i = 0; i < kRegSteps; ++i)
#pragma unroll
    for (int k = 0; k < kGr; ++k) {
      rr[i][k][0] = rr[i][k][1] = 0u;
      if (kg + i * k_groups < plan.reg_ksteps) r_fragment(kg + i * k_groups, k, rr[i][k]);
    }
  __syncthreads();
  __shared__ uint64_t staged;  // multicast staging: h_{t-1}'s blocks have arrived
  const bool multicast = plan.cluster > 1, in_ranges = multicast && plan.copy_blocks > 0;
  if (kTagged && !in_ranges) __trap();  // (the host launches it only with copies in ranges)
  if (multicast) multi::start_multicast(&staged);
  if (in_ranges) cluster_arrive_relaxed();  // hs is free (the first step's cluster_wait below)

  // The exchange: h_t of this (head, group) at region(t), all its blocks in slice order; then one
  // progress flag per CTA [head][group][slice], a line each (multi::flag_at).
  unsigned char* xdata = reinterpret_cast<unsigned char*>(p.workspace);
  unsigned* flags = reinterpret_cast<unsigned*>(p.workspace) + multi::exchange_words(B, N, D, sizeof(T));
  unsigned* group_flags = multi::flag_at(flags, (n * plan.groups + group) * plan.slices);
  const int region_bytes = plan.slices * block_bytes;
  auto region = [&](int64_t t) {
    return xdata + (((t & 1) * N + n) * plan.padded_batch() + b0) * D * int64_t(kElementBytes);
  };

  // Pointwise threads: 4 per batch row, each owning units u0 + 2 * pair and + 1.
  const int prow = tid / 4, pair = tid % 4;
  const int64_t pb = b0 + prow, unit = u0 + 2 * pair;
  const bool pw = prow < valid_rows;
  multi::ForwardPair<Cell, T> cell(p, pb, n, unit, pw);
  // This thread's two units in its CTA's block of region(t).
  auto h_slot = [&](int64_t t) {
    return reinterpret_cast<uint32_t*>(region(t) + int(blockIdx.x) * block_bytes + prow * kUnitBytes +
                                       2 * pair * kElementBytes);
  };
  // The block's rows past the batch are zeros (whole blocks are staged; tagged: the host zeroed them).
  if (!kTagged && !pw && prow < rows)
    for (int par = 0; par < 2; ++par)
#pragma unroll
      for (int i = 0; i < multi::kWordsPerPair<T>; ++i) h_slot(par)[i] = 0u;
  auto publish = [&](int64_t t) {  // h_t into parity t % 2 (pointwise threads), then the flag t + 1
    if constexpr (kTagged) {  // (tag t + 1: the flag's value)
      if (pw) {
        uint32_t w[1];
        cell.h_words(w);
        multi::store_tagged(h_slot(t), w[0], unsigned(t + 1), prow);
      }
      return;
    }
    if (pw) {
      uint32_t w[multi::kWordsPerPair<T>];
      cell.h_words(w);
      uint32_t* dst = h_slot(t);
#pragma unroll
      for (int i = 0; i < multi::kWordsPerPair<T>; ++i) dst[i] = w[i];
    }
    multi::release_flag(multi::flag_at(group_flags, blockIdx.x), unsigned(t + 1));
  };
  if (pw && steps > 0) cell.load_wx(0);
  if (steps > 0) publish(0);

  const uint32_t a_src = multi::block_a_address(hs, rows, mt * 16, kUnitBytes);
  // Tagged: this lane's A words (m16n8k16: rows g and g + 8, units 2q, 2q + 1 of a k-step's two
  // blocks) are 32-bit loads from the data halves of the tagged words.
  const uint32_t a_tagged = smem_addr(hs + ((mt * 16 + g) * 4 + q) * 8 + 4 * multi::tag_swapped(g));
  auto load_a_at = [&](int ks, uint32_t (&a)[4]) {  // the A fragment of k-step ks
    if constexpr (kTagged) {
      const uint32_t w = a_tagged + ks * 2 * block_bytes;
      a[0] = ld_shared_u32(w);
      a[1] = ld_shared_u32(w + 8 * kUnitBytes);
      a[2] = ld_shared_u32(w + block_bytes);
      a[3] = ld_shared_u32(w + block_bytes + 8 * kUnitBytes);
    } else {
      ldmatrix_x4(a, a_src + ks * 32 * rows);
    }
  };
  // Multicast in ranges: the issuing warps are those without pointwise rows (their releases and
  // acquires would wait for the Wx loads in flight), all where every warp has some.
  const int pointwise_warps = (rows * 4 + 31) / 32;
  const int issuers = pointwise_warps < multi::kWarps ? multi::kWarps - pointwise_warps : multi::kWarps;
  const int issuer = multi::kWarps - 1 - warp < issuers ? multi::kWarps - 1 - warp : -1;  // from the last warp
  const float clip = p.forward_clip_value;
  for (int64_t t = 1; t <= steps; ++t) {
    // Stage h_{t-1} into hs through L2 (the bulk copies and cp.async.cg read L2: no stale L1 line
    // of the parity's use two steps ago). A CTA publishes h_{t+1} into this parity again only
    // after every CTA has published h_t, i.e. after every CTA has staged h_{t-1}.
    if (in_ranges) {  // each copy once its blocks' flags show them, after the cluster is done with hs
      cluster_wait();
      auto stage = [&](const auto& ready) {
        multi::multicast_ranges(hs, region(t - 1), unsigned(block_bytes), plan.slices, plan.copy_blocks, plan.cluster,
                                &staged, issuer, issuers, ready);
      };
      if constexpr (kTagged)
        stage(multi::TagsReady{region(t - 1), block_bytes, plan.copy_blocks, unsigned(t), valid_rows});
      else
        stage(multi::FlagsReady{group_flags, unsigned(t), plan.copy_blocks});
    } else {  // once every CTA of this (head, group) has published h_{t-1} (acquire polls)
      multi::wait_for_flags(group_flags, plan.slices, unsigned(t));
      if (multicast)  // every CTA of the cluster has published h_{t-1}: none still reads hs
        multi::multicast_shares(hs, region(t - 1), region_bytes, plan.cluster, &staged, multi::kWarps - 1);
      else
        multi::copy_to_shared(hs, region(t - 1), region_bytes);
    }
    if (multicast) mbar_wait<Wait::kCopies>(&staged, unsigned(t - 1) & 1u, cluster::kMaxPolls);
    else cp_async_wait<0>();
    __syncthreads();  // hs holds h_{t-1}; red is free (the last step's pointwise reads are done)

    // The k-steps whose R fragments sit in registers (unrolled: each A fragment is loaded while
    // the previous one's products run), in shared memory, then those read from L2 (separate loops,
    // so that each carries no address arithmetic of the others).
    float acc[kGr][4] = {};
    {
      auto load_a = [&](int i, uint32_t (&a)[4]) {  // (a k-step past the head reads k-step kg, unused)
        const int ks = kg + i * k_groups;
        load_a_at(ks < plan.reg_ksteps ? ks : kg, a);
      };
      uint32_t a[2][4];
      load_a(0, a[0]);
#pragma unroll
      for (int i = 0; i < kRegSteps; ++i) {
        if (i + 1 < kRegSteps) load_a(i + 1, a[(i + 1) % 2]);
        if (kg + i * k_groups < plan.reg_ksteps)
#pragma unroll
          for (int k = 0; k < kGr; ++k) M::mma(acc[k], a[i % 2], rr[i][k], p.allow_tf32);
      }
    }
    const int resident_end = plan.reg_ksteps + plan.resident;
    int ks = kg + kRegSteps * k_groups;
    for (; ks < resident_end; ks += k_groups) {
      uint32_t a[4];
      load_a_at(ks, a);
#pragma unroll
      for (int k = 0; k < kGr; ++k) {
        const uint2 v = rs[((ks - plan.reg_ksteps) * kGr + k) * 32 + lane];
        const uint32_t f[2] = {v.x, v.y};
        M::mma(acc[k], a, f, p.allow_tf32);
      }
    }
    for (; ks < ksteps; ks += k_groups) {
      uint32_t a[4];
      load_a_at(ks, a);
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
    if (in_ranges) cluster_arrive_relaxed();  // this CTA's reads of hs are complete (their values used)

    if (pw) {
      float2 rh_pair[kGr];  // R h_{t-1} at this thread's two units, summed over the k-groups
      // (k_groups = 8 / mt as a constant: with a run-time count the loads went out one k-group at a time)
      if (mt_count == 1)
        multi::sum_gate_pairs<kGr, multi::kWarps>(rh_pair, red, kRed, multi::kUnits, rows, prow, pair);
      else if (mt_count == 2)
        multi::sum_gate_pairs<kGr, multi::kWarps / 2>(rh_pair, red, kRed, multi::kUnits, rows, prow, pair);
      else
        multi::sum_gate_pairs<kGr, multi::kWarps / 4>(rh_pair, red, kRed, multi::kUnits, rows, prow, pair);
      cell.template step<Math>(rh_pair, p.forward_clip, clip);
      if (t < steps) cell.load_wx(t);  // (loaded after the publication instead: 768 x 1 3.9 -> 4.4 ms)
    }
    if (t < steps) publish(t);  // (h_T is not exchanged: nobody reads it)
    if (pw) cell.store();
  }
  // No CTA leaves while its copies may still be landing in a peer: every peer has waited for its
  // copies of the last step before its arrive.
  if (in_ranges) cluster_wait();
  else if (multicast) cluster_sync();
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
  auto plan_for = [&](multi::Plan& plan, bool tagged) {
    return multi::make_plan(plan, false, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim, device.smem_per_block,
                            device.smem_per_sm, device.sm_count, false, tagged);
  };
  multi::Plan plan;
  const char* why = plan_for(plan, false);
  if constexpr (sizeof(T) == 2) {
    if (cluster::wide_takes(cplan, false, Cell::kGatesR, sizeof(T), p.batch, p.heads, p.head_dim,
                            device.smem_per_block, why == nullptr ? &plan : nullptr, device.sm_count) &&
        cluster::launch_clusters(cluster_wide_forward_kernel<Cell, T>, cplan, device, stream,
                                 "cluster_wide_forward_kernel", p, cplan))
      return;
  }
  FLASHRNN_CHECK(why == nullptr, "multi-CTA forward: " << why);
  const char* name = "multi_forward_kernel";
  const int wanted = multi::copy_wanted("FLASHRNN_FORWARD_COPY", plan.slices);
  // The tagged exchange where it is wanted and can run (16-bit on sm_90: it needs clusters, and a
  // block must fit a piece a warp polls: 16 or 32 rows), else the flags'; only where its larger
  // stage costs no extra wave (a 1536 x 2 B = 64 head ran 8 waves of launches, not 4).
  if constexpr (sizeof(T) == 2) {
    multi::Plan tagged_plan;
    if (device.cc_major >= 9 && multi::tagged_wanted(plan.slices) && plan_for(tagged_plan, true) == nullptr &&
        tagged_plan.waves() == plan.waves() &&
        multi::tagged_block_bytes(tagged_plan.rows()) <= multi::kTagPieceBytes) {
      // copies of at most kTagPieceBytes (a warp polls their words together)
      tagged_plan = multi::launch_plan(multi_forward_kernel<Cell, T, true>, tagged_plan, device, name);
      const int piece = multi::kTagPieceBytes / multi::tagged_block_bytes(tagged_plan.rows());
      tagged_plan.copy_blocks = multi::copy_blocks(plan.slices, tagged_plan.cluster, wanted < piece ? wanted : piece);
      if (tagged_plan.copy_blocks > 0) {  // (else no clusters came: the flags' exchange)
        FLASHRNN_CUDA_CHECK(cudaMemsetAsync(  // no tag before the kernel's own (and the rows past the batch zero)
            p.workspace, 0, sizeof(unsigned) * multi::exchange_words(p.batch, p.heads, p.head_dim, sizeof(T)), stream));
        multi::launch_cooperative(multi_forward_kernel<Cell, T, true>, tagged_plan, stream, name, p);
        return;
      }
    }
  }
  FLASHRNN_CUDA_CHECK(cudaMemsetAsync(  // the progress flags (the h rows are written before they are read)
      p.workspace + multi::exchange_words(p.batch, p.heads, p.head_dim, sizeof(T)), 0,
      sizeof(unsigned) * multi::flag_words(p.batch, p.heads, p.head_dim), stream));
  plan = multi::launch_plan(multi_forward_kernel<Cell, T>, plan, device, name);
  plan.copy_blocks =  // the CTA's whole range in one copy, as a rule (perf-log.md, seventeenth session)
      multi::copy_blocks(plan.slices, plan.cluster, wanted);
  multi::launch_cooperative(multi_forward_kernel<Cell, T>, plan, stream, name, p);
}

}  // namespace flashrnn
