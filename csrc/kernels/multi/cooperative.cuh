// Launching the multi-CTA kernels: every CTA of the grid must be resident at once (they wait for
// each other every step), so the launch is cooperative (the driver refuses a grid that cannot be
// co-resident instead of running it partially) and residency is checked before it.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "../../common/check.h"
#include "../../common/params.h"
#include "../common/device.cuh"
#include "plan.h"

namespace flashrnn::multi {

// A poll of the progress flags that has not seen what it waits for after this many rounds means a
// broken launch: the kernel traps (a CUDA error, raised in Python) rather than hanging the GPU.
constexpr long long kMaxPolls = 1LL << 26;
constexpr long long kMaxBarrierPolls = 1LL << 22;  // the same for the multicast staging's mbarrier waits

// Waits until each of the `count` progress flags of this CTA's (head, batch group) is at least
// `want` (threads of the block poll one flag each, relaxed: no L1 invalidation per poll; then one
// acquire per flag), then meets the whole block: every write released before those flags is
// visible to every thread after it. Called by all threads.
__device__ __forceinline__ void wait_for_flags(const unsigned* flags, int count, unsigned want) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    long long polls = 0;
    while (ld_relaxed_gpu(flags + i) < want) {
      if (++polls > kMaxPolls) __trap();
      __nanosleep(32);
    }
    ld_acquire_gpu(flags + i);  // (a fence.acq_rel instead: slower, it waits for the thread's stores and loads in flight)
  }
  __syncthreads();
}

// Meets the whole block (every thread's writes before it are done), then sets this CTA's flag to
// `value`; the release store orders every write the barrier made visible to thread 0
// (cumulativity). Called by all threads.
__device__ __forceinline__ void release_flag(unsigned* flag, unsigned value) {
  __syncthreads();
  if (threadIdx.x == 0) st_release_gpu(flag, value);
}

// Stages `rows` x `segments` pieces of `bytes` each from global memory (piece (r, s) at src +
// r * src_row + s * src_segment bytes) into shared memory at dst + r * dst_row + s * bytes, in this
// CTA and every CTA of its cluster: the cluster's CTAs split the rows and multicast each piece
// (one L2 read per cluster instead of one per CTA), and every CTA waits until all pieces have
// arrived in its own shared memory (`bar`, phase `parity`). Called by all threads, after the
// block met past the acquire of the data; nobody may still read the previous contents of dst in
// any CTA of the cluster.
__device__ __forceinline__ void multicast_rows(unsigned char* dst, int dst_row, const unsigned char* src,
                                               int64_t src_row, int64_t src_segment, int rows, int segments,
                                               unsigned bytes, int cluster, uint64_t* bar, unsigned parity) {
  if (threadIdx.x == 0) mbar_arm(bar, unsigned(rows * segments) * bytes);
  if (threadIdx.x < 32) {
    fence_proxy_async_global();  // the peers' rows were written and acquired through the generic proxy
    const int pieces = rows * segments, first = int(cluster_rank()), mask = (1 << cluster) - 1;
    for (int i = first + cluster * int(threadIdx.x); i < pieces; i += 32 * cluster) {
      const int r = i / segments, s = i - r * segments;
      bulk_copy_multicast(smem_addr(dst + r * dst_row + s * int(bytes)), src + r * src_row + s * src_segment, bytes,
                          smem_addr(bar), uint16_t(mask));
    }
  }
  mbar_wait(bar, parity, kMaxBarrierPolls);
}

// Sets up the multicast staging's mbarrier (plan.cluster > 1) and meets the cluster: no peer
// copies into this CTA before its barrier exists. Called by all threads.
__device__ __forceinline__ void start_multicast(uint64_t* bar) {
  if (threadIdx.x == 0) mbar_init(bar);
  cluster_sync();
}

// FLASHRNN_MULTICAST=0 turns the multicast staging off (each CTA copies every row itself, as on
// sm_80/86): tests and benchmarks compare the two on one card.
inline bool multicast_enabled() {
  const char* v = std::getenv("FLASHRNN_MULTICAST");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Launches kernel(param, plan, rest...) over (slices, groups, heads) CTAs, cooperatively. On
// sm_90 the CTAs form clusters of plan.cluster for the multicast staging where every cluster fits
// at once; else plan.cluster = 1.
template <class Param, class... Rest>
void launch_cooperative(void (*kernel)(Param, Plan, Rest...), Plan plan, const DeviceLimits& device,
                        cudaStream_t stream, const char* name, const Param& param, const Rest&... rest) {
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(plan.slices), unsigned(plan.groups), unsigned(plan.heads));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = size_t(plan.smem);
  config.stream = stream;
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[1].id = cudaLaunchAttributeCooperative;
  attrs[1].val.cooperative = 1;

  plan.cluster = device.cc_major >= 9 && multicast_enabled() ? multicast_cluster(plan.slices) : 1;
  if (plan.cluster > 1) {
    attrs[0].val.clusterDim.x = unsigned(plan.cluster);
    attrs[0].val.clusterDim.y = 1;
    attrs[0].val.clusterDim.z = 1;
    config.attrs = attrs;
    config.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess ||
        (long long)clusters * plan.cluster < plan.ctas) {
      (void)cudaGetLastError();
      plan.cluster = 1;  // the clusters do not fit at once: plain copies
    }
  }
  if (plan.cluster == 1) {
    int per_sm = 0;
    FLASHRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem));
    FLASHRNN_CHECK((long long)per_sm * device.sm_count >= plan.ctas,
                   name << ": " << plan.ctas << " CTAs must be resident at once, the device holds " << per_sm
                        << " per SM x " << device.sm_count << " SMs");
  }
  config.attrs = plan.cluster > 1 ? attrs : attrs + 1;
  config.numAttrs = plan.cluster > 1 ? 2 : 1;
  FLASHRNN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, param, plan, rest...));
  FLASHRNN_CHECK_LAUNCH(name);
}

}  // namespace flashrnn::multi
