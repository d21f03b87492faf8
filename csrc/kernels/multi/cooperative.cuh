// Launching the multi-CTA kernels: every CTA of the grid must be resident at once (they wait for
// each other every step), so the launch is cooperative (the driver refuses a grid that cannot be
// co-resident instead of running it partially) and residency is checked before it.
#pragma once

#include <cuda_runtime.h>

#include "../../common/check.h"
#include "../../common/params.h"
#include "plan.h"

namespace flashrnn::multi {

// A poll (the forward's tagged words, the backward's counters) that has not seen what it waits
// for after this many rounds means a broken launch: the kernel traps (a CUDA error, raised in
// Python) rather than hanging the GPU.
constexpr long long kMaxPolls = 1LL << 26;

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
