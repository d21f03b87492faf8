// Launching the multi-CTA kernels: every CTA of the grid must be resident at once (they wait for
// each other every step), so the launch is cooperative (the driver refuses a grid that cannot be
// co-resident instead of running it partially) and residency is checked before it.
#pragma once

#include <cuda_runtime.h>

#include "../../common/check.h"
#include "../../common/params.h"
#include "../common/device.cuh"
#include "plan.h"

namespace flashrnn::multi {

// A poll of the progress flags that has not seen what it waits for after this many rounds means a
// broken launch: the kernel traps (a CUDA error, raised in Python) rather than hanging the GPU.
constexpr long long kMaxPolls = 1LL << 26;

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
    ld_acquire_gpu(flags + i);
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

template <class... Params, class... Args>
void launch_cooperative(void (*kernel)(Params...), const Plan& plan, const DeviceLimits& device, cudaStream_t stream,
                        const char* name, const Args&... args) {
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem));
  int per_sm = 0;
  FLASHRNN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem));
  FLASHRNN_CHECK((long long)per_sm * device.sm_count >= plan.ctas,
                 name << ": " << plan.ctas << " CTAs must be resident at once, the device holds " << per_sm
                      << " per SM x " << device.sm_count << " SMs");
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(plan.slices), unsigned(plan.groups), unsigned(plan.heads));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = size_t(plan.smem);
  config.stream = stream;
  cudaLaunchAttribute cooperative[1];
  cooperative[0].id = cudaLaunchAttributeCooperative;
  cooperative[0].val.cooperative = 1;
  config.attrs = cooperative;
  config.numAttrs = 1;
  FLASHRNN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
  FLASHRNN_CHECK_LAUNCH(name);
}

}  // namespace flashrnn::multi
