// Launching the multi-CTA kernels: every CTA of the grid must be resident at once (they wait for
// each other every step), so the launch is cooperative (the driver refuses a grid that cannot be
// co-resident instead of running it partially) and residency is checked before it.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "../../common/check.h"
#include "../../common/params.h"
#include "../common/device.cuh"
#include "../weight_grad/sizes.h"
#include "cluster_launch.h"
#include "plan.h"
#include "switches.h"

namespace flashrnn::multi {

// Progress flag i of an array of them (plan.h flag_words: kFlagSpacing words apart, a line each).
template <class U>
__device__ __forceinline__ U* flag_at(U* flags, long long i) {
  return flags + i * kFlagSpacing;
}

// A poll of the progress flags that has not seen what it waits for after this many rounds means a
// broken launch: the kernel traps (a CUDA error, raised in Python) rather than hanging the GPU.
constexpr long long kMaxPolls = 1LL << 26;

// Polls flags first, first + stride, ... of `count` until each is at least `want`, with acquire
// loads: the poll that sees the value is the acquire (relaxed polls and then one acquire cost a
// second L2 round trip per flag; a fence.acq_rel instead is slower still: it waits for the
// thread's stores and loads in flight).
template <unsigned kSleepNs>
__device__ __forceinline__ void poll_flags(const unsigned* flags, int count, unsigned want, int first, int stride) {
  for (int i = first; i < count; i += stride) {
    long long polls = 0;
    while (ld_acquire_gpu(flag_at(flags, i)) < want) {
      if (++polls > kMaxPolls) __trap();
      __nanosleep(kSleepNs);
    }
  }
}

// Waits until each of the `count` progress flags of this CTA's (head, batch group) is at least
// `want` (threads of the block poll one flag each, from the last thread down: past the pointwise
// rows and their loads in flight), then meets the whole block: every write released before those
// flags is visible to every thread after it. Called by all threads. kPollers > 0: only the first
// that many threads poll, kSleepNs apart (the dR and db CTAs, weight_grad/alongside.cuh, poll the
// same lines as the recurrence, less often).
template <int kPollers = 0, unsigned kSleepNs = 32>
__device__ __forceinline__ void wait_for_flags(const unsigned* flags, int count, unsigned want) {
  const int tid = int(threadIdx.x), threads = int(blockDim.x);
  if (kPollers == 0) poll_flags<kSleepNs>(flags, count, want, threads - 1 - tid, threads);
  else if (tid < kPollers) poll_flags<kSleepNs>(flags, count, want, tid, kPollers);
  __syncthreads();
}

// Meets the block's first `threads` threads (named barrier 1; the others run on), or the whole
// block where `threads` is 0.
__device__ __forceinline__ void meet(int threads) {
  if (threads > 0) named_barrier(1, threads);
  else __syncthreads();
}

// Meets the whole block (every thread's writes before it are done), then sets this CTA's flag to
// `value`; the release store, by the last thread that meets (past the pointwise rows: the release
// waits for the thread's own loads in flight), orders every write the barrier made visible to it
// (cumulativity). Called by all threads.
// `threads` > 0: only the block's first `threads` threads meet (see meet()).
__device__ __forceinline__ void release_flag(unsigned* flag, unsigned value, int threads = 0) {
  meet(threads);
  if (int(threadIdx.x) == (threads > 0 ? threads : int(blockDim.x)) - 1) st_release_gpu(flag, value);
}

// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from src in global memory
// into this CTA's shared memory at dst with cp.async (one commit group; the caller waits for it):
// thread i takes 16-byte parts i, i + threads, ... (512 contiguous bytes per warp and
// instruction). Called by all threads.
__device__ __forceinline__ void copy_to_shared(unsigned char* dst, const unsigned char* src, int bytes) {
  for (int i = int(threadIdx.x) * 16; i < bytes; i += int(blockDim.x) * 16) cp_async_16(dst + i, src + i, true);
  cp_async_commit();
}

// The same into this CTA and every CTA of its cluster: CTA rank r multicasts the r-th of `cluster`
// equal shares of the bytes (a multiple of 16 * cluster) in one bulk copy (one L2 read per cluster
// instead of one per CTA), issued by lane 0 of warp `warp`; every CTA's mbarrier `bar` counts the
// bytes landing in it (the caller waits on it: mbar_wait). Called by all threads of every CTA of
// the cluster, once nobody in the cluster still reads the previous contents of dst and past a
// block barrier that followed the acquire of the data.
__device__ __forceinline__ void multicast_shares(unsigned char* dst, const unsigned char* src, int bytes, int cluster,
                                                 uint64_t* bar, int warp) {
  if (int(threadIdx.x) != 32 * warp) return;
  mbar_arm(bar, unsigned(bytes));
  fence_proxy_async_global();  // the data was written and acquired through the generic proxy
  const int share = bytes / cluster, first = int(cluster_rank()) * share;
  bulk_copy_multicast(smem_addr(dst + first), src + first, unsigned(share), smem_addr(bar), uint16_t((1 << cluster) - 1));
}

// The ldmatrix_x4 address of this lane's row for the A fragment of rows row0..row0+15, k-step 0,
// of an operand in blocks of 8 units ([block][rows][8 units], unit_bytes per row of a block): a
// k-step's 32 bytes of a row are two blocks' rows (16-bit) or one (fp32), lanes 16-31 reading the
// second 16 bytes; k-step ks lies ks * 32 * rows bytes further.
__device__ __forceinline__ uint32_t block_a_address(const unsigned char* base, int rows, int row0, int unit_bytes) {
  const int lane = int(threadIdx.x % 32), part = (lane >> 4) * 16;
  return smem_addr(base + (part / unit_bytes * rows + row0 + (lane & 15)) * unit_bytes) + part % unit_bytes;
}

// The backward's dg exchange: after the progress flags, 16-byte aligned (plan.h dg_exchange_words).
__device__ __forceinline__ unsigned char* dg_exchange(unsigned* flags, long long batch, long long heads,
                                                      long long head_dim) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(flags + flag_words(batch, heads, head_dim));
  return reinterpret_cast<unsigned char*>((end + 15) & ~uintptr_t(15));
}

// The tagged exchange (the 16-bit forward on sm_90, multi_forward.cuh): each 32-bit word of h (a
// unit pair of one row) travels in an 8-byte word beside its tag, the step count that publishes
// it, so that a reader that sees the tag sees the data: no release, no progress flag. A block's row
// is 4 such words (32 bytes); in rows whose bit 2 is set the tag is the low half and the data the
// high one, so that the A fragments' 32-bit loads of rows g and g + 4 hit different banks.
__device__ __forceinline__ int tag_swapped(int row) { return (row >> 2) & 1; }
__device__ __forceinline__ void store_tagged(void* word, uint32_t data, unsigned tag, int row) {
  if (tag_swapped(row)) st_relaxed_gpu_b64(word, tag, data);
  else st_relaxed_gpu_b64(word, data, tag);
}

// 16-byte pieces of tagged words a warp polls together: a range's piece of blocks is at most
// kTagChunks * 32 of them (1 KB; multi_forward.cuh's copy_blocks).
constexpr int kTagChunks = 2;
constexpr int kTagPieceBytes = kTagChunks * 32 * 16;

// Polls the tagged words of `bytes` (blocks of `block_bytes`, rows of 32 bytes) at src until every
// one of the first valid_rows rows of each block carries `want` (the rows past the batch are never
// written: zeros). Lane l polls 16-byte pieces l, l + 32, ..., all of them in flight together, then
// only those not yet seen. Called by a whole warp.
__device__ __forceinline__ void wait_for_tags(const unsigned char* src, int bytes, int block_bytes, unsigned want,
                                              int valid_rows) {
  const int lane = int(threadIdx.x % 32);
  if (bytes > kTagPieceBytes) __trap();
  auto row_of = [&](int m) { return (lane + 32 * m) * 16 % block_bytes / 32; };
  unsigned pending = 0;
#pragma unroll
  for (int m = 0; m < kTagChunks; ++m)
    if ((lane + 32 * m) * 16 < bytes && row_of(m) < valid_rows) pending |= 1u << m;
  for (long long polls = 0; pending != 0; ++polls) {
    uint4 v[kTagChunks];
#pragma unroll
    for (int m = 0; m < kTagChunks; ++m)
      if (pending >> m & 1u) v[m] = ld_relaxed_gpu_2x64(src + (lane + 32 * m) * 16);
#pragma unroll
    for (int m = 0; m < kTagChunks; ++m) {
      const bool swapped = tag_swapped(row_of(m));
      if ((pending >> m & 1u) && (swapped ? v[m].x : v[m].y) == want && (swapped ? v[m].z : v[m].w) == want)
        pending &= ~(1u << m);
    }
    if (polls > kMaxPolls) __trap();  // (a sleep between polls measured slower: 100 ns 768 x 1 +0-4%, 400 ns +3-10%)
  }
}

// multicast_ranges' wait for a copy's blocks (block i .. i + per_copy - 1, counted from the flags'
// and the source's start), by the whole issuing warp: their CTAs' progress flags at least `want`,
// lane l < per_copy polling block i + l's (acquire); or their tagged words carrying `want`.
struct FlagsReady {
  const unsigned* flags;
  unsigned want;
  int per_copy;
  __device__ __forceinline__ void operator()(int i) const {
    const int lane = int(threadIdx.x % 32);
    if (lane < per_copy) poll_flags<32>(flags, i + lane + 1, want, i + lane, 1);
  }
};
struct TagsReady {
  const unsigned char* src;
  int block_bytes, per_copy;
  unsigned want;
  int valid_rows;
  __device__ __forceinline__ void operator()(int i) const {
    wait_for_tags(src + int64_t(i) * block_bytes, per_copy * block_bytes, block_bytes, want, valid_rows);
  }
};

// Stages `count` blocks of `bytes` each (block i at src + i * bytes) into dst + i * bytes of this
// CTA and of every CTA of its cluster (count is a multiple of the cluster size): CTA rank r takes
// the r-th range of count / cluster consecutive blocks, in bulk copies of `per_copy` blocks (at
// most 32, dividing the range; plan.h copy_blocks). `issuers` warps take turns: copy c by the warp
// whose `issuer` is c % issuers (-1: a warp that issues none), once ready(i) has seen its blocks
// published (FlagsReady or TagsReady): a copy waits only for its own blocks' CTAs, and a copy's
// blocks are polled together. Every CTA's mbarrier `bar` counts the bytes landing in it (the
// caller waits on it: mbar_wait). Called by all threads, once no CTA of the cluster still reads dst.
template <class Ready>
__device__ __forceinline__ void multicast_ranges(unsigned char* dst, const unsigned char* src, unsigned bytes,
                                                 int count, int per_copy, int cluster, uint64_t* bar, int issuer,
                                                 int issuers, const Ready& ready) {
  const int lane = int(threadIdx.x % 32);
  if (issuer < 0) return;
  if (issuer == 0 && lane == 0) mbar_arm(bar, unsigned(count) * bytes);
  const int range = count / cluster, first = int(cluster_rank()) * range, mask = (1 << cluster) - 1;
  for (int c = issuer; c * per_copy < range; c += issuers) {
    const int i = first + c * per_copy;
    ready(i);
    __syncwarp();  // every block of the copy is seen (the lanes' polls precede lane 0's copy)
    if (lane == 0) {
      // The blocks were written and seen through the generic proxy; the bulk copy reads the words
      // the polls saw, or later ones (the same locations, after the proxy fence).
      fence_proxy_async_global();
      bulk_copy_multicast(smem_addr(dst + i * int(bytes)), src + int64_t(i) * bytes, unsigned(per_copy) * bytes,
                          smem_addr(bar), uint16_t(mask));
    }
  }
}

// Sets up the multicast staging's mbarriers (plan.cluster > 1) and meets the cluster: no peer
// copies into this CTA or arrives on it before its barriers exist. full[s] counts the bytes landing
// in buffer s (one local arrival, the arm); the backward's ring (multi_backward.cuh) also has
// empty[s], one arrival per CTA of the cluster that has consumed a chunk whose buffer is refilled
// within the same step. Waits on them poll at most cluster::kMaxPolls times. Called by all threads.
__device__ __forceinline__ void start_multicast(uint64_t* full, int slots = 1, uint64_t* empty = nullptr,
                                                int cluster = 0) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < slots; ++s) {
      mbar_init(&full[s]);
      if (empty != nullptr) mbar_init(&empty[s], unsigned(cluster));
    }
  }
  cluster_sync();
}

// A position in the backward's ring of stage buffers: the buffer and the parity of its current use.
struct RingCursor {
  int slots, slot = 0;
  unsigned phase = 0;
  __device__ __forceinline__ void next() {
    if (++slot == slots) {
      slot = 0;
      phase ^= 1u;
    }
  }
};

// Completes `plan` for a cooperative launch of `kernel` on `device` (and sets the kernel's
// attributes it needs): on sm_90 plan.cluster, the largest cluster (16 where the device allows it,
// else 8, 4, 2) that divides a chunk's blocks (every CTA of a cluster stages as many of each
// chunk) and whose clusters all fit at once, else 1; where plan.alongside asks,
// plan.dr_columns, the grid columns that fit beside the slices (whole clusters, at least
// weight_grad::kAlongsideMinCtas CTAs, else 0); a smaller cluster where only it leaves them room.
// Throws where the CTAs cannot all be resident.
template <class Param, class... Rest>
Plan launch_plan(void (*kernel)(Param, Plan, Rest...), Plan plan, const DeviceLimits& device, const char* name) {
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(plan.slices), unsigned(plan.wave_groups), unsigned(plan.wave_heads));
  config.blockDim = dim3(unsigned(plan.threads()));
  config.dynamicSmemBytes = size_t(plan.smem);
  cudaLaunchAttribute attr;
  int largest = device.cc_major >= 9 ? multicast_largest() : 1;
  if (largest > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();
    largest = 8;
  }
  const bool alongside = plan.alongside && !turned_off("FLASHRNN_DR_ALONGSIDE");
  // Grid columns of dR and db CTAs beside the slices where `resident` CTAs fit in clusters of `cluster`.
  auto columns_beside = [&](long long resident, int cluster) {
    const long long per_column = (long long)plan.wave_groups * plan.wave_heads;
    int columns = int((resident - plan.ctas) / per_column);
    columns -= columns % cluster;
    return alongside && columns * per_column >= weight_grad::kAlongsideMinCtas ? columns : 0;
  };
  plan.dr_columns = 0;
  plan.cluster = 1;
  const int blocks = plan.slices / plan.chunks;  // a chunk's blocks (multi_backward.cuh; forward: all)
  for (int c = multicast_cluster(blocks, largest); c > 1; c = multicast_cluster(blocks, c / 2)) {
    const long long resident = (long long)cluster::max_active_clusters(kernel, config, attr, c) * c;
    if (resident < plan.ctas) continue;
    if (plan.cluster == 1) plan.cluster = c;  // the largest that fits
    if (const int columns = columns_beside(resident, c); columns > 0) {
      plan.cluster = c;
      plan.dr_columns = columns;
    }
    if (!alongside || plan.dr_columns > 0) break;
  }
  if (plan.cluster == 1) {
    int per_sm = 0;
    FLASHRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, plan.threads(), plan.smem));
    const long long resident = (long long)per_sm * device.sm_count;
    FLASHRNN_CHECK(resident >= plan.ctas, name << ": " << plan.ctas << " CTAs must be resident at once, the device holds "
                                               << per_sm << " per SM x " << device.sm_count << " SMs");
    plan.dr_columns = columns_beside(resident, 1);
  }
  return plan;
}

// One cooperative launch of `plan`'s wave at (plan.group0, plan.head0): groups x heads of it.
template <class Param, class... Rest>
void launch_wave(void (*kernel)(Param, Plan, Rest...), const Plan& plan, int groups, int heads, cudaStream_t stream,
                 const char* name, const Param& param, const Rest&... rest) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(plan.slices + plan.dr_columns), unsigned(groups), unsigned(heads));
  config.blockDim = dim3(unsigned(plan.threads()));
  config.dynamicSmemBytes = size_t(plan.smem);
  config.stream = stream;
  cudaLaunchAttribute attrs[2];  // the cluster dimension, cooperative
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = unsigned(plan.cluster);
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  attrs[1].id = cudaLaunchAttributeCooperative;
  attrs[1].val.cooperative = 1;
  config.attrs = plan.cluster > 1 ? attrs : attrs + 1;
  config.numAttrs = plan.cluster > 1 ? 2 : 1;
  FLASHRNN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, param, plan, rest...));
  FLASHRNN_CHECK_LAUNCH(name);
}

// Launches kernel(param, plan, rest...) over (slices + dr_columns, groups, heads) CTAs,
// cooperatively, in clusters of plan.cluster where it is above 1, one launch per wave (plan.h);
// `plan` from launch_plan.
template <class Param, class... Rest>
void launch_cooperative(void (*kernel)(Param, Plan, Rest...), const Plan& plan, cudaStream_t stream, const char* name,
                        const Param& param, const Rest&... rest) {
  for (int h0 = 0; h0 < plan.heads; h0 += plan.wave_heads)
    for (int g0 = 0; g0 < plan.groups; g0 += plan.wave_groups) {
      Plan wave = plan;
      wave.head0 = h0;
      wave.group0 = g0;
      launch_wave(kernel, wave, std::min(plan.wave_groups, plan.groups - g0), std::min(plan.wave_heads, plan.heads - h0),
                  stream, name, param, rest...);
    }
}

}  // namespace flashrnn::multi
