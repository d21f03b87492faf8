// Launching the cluster variant (cluster_plan.h). Clusters are independent of each other, so
// nothing needs the whole grid resident: the hardware co-schedules the CTAs of each cluster.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "../../common/check.h"
#include "../../common/params.h"
#include "cluster_plan.h"
#include "plan.h"

namespace flashrnn::cluster {

// FLASHRNN_MULTI_L2=1 makes large heads run the L2 variant even where clusters would run (tests
// and benchmarks compare the two on one card).
inline bool disabled() {
  const char* v = std::getenv("FLASHRNN_MULTI_L2");
  return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
}

// Whether the wide cluster kernels run the shape of their plan `wide` (cluster_plan.h
// make_wide_plan) where the L2 variant's plan is `l2` (plan.h; nullptr: it cannot run the shape) on
// a device of `sm_count` SMs. Unset FLASHRNN_WIDE: where they measured faster than the L2 variant
// (H100, LSTM bf16, T = 1024, fw / fwbw ms):
//  - from kWideMinClusters clusters (batch groups x heads) on: 768 x 1 at B = 16 3.9 / 12.4 against
//    2.86 / 7.9, B = 32 3.91 / 12.6 against 3.39 / 11.9, B = 48 3.82 / 12.8 against 4.40 / 18.9;
//    768 x 2 at B = 32 3.83 / 15.0 against 6.08 / 30.9 (one cluster's step does not depend on the
//    batch, the L2 variant's grows);
//  - in the backward, wherever the L2 variant's CTAs outnumber the SMs (two share an SM): 768 x 2 at
//    B = 16 3.81 / 12.7 against 3.56 / 18.6 (the forward stays with the L2 variant there);
//  - wherever the L2 variant needs more than one wave or cannot run (the wide clusters need not be
//    resident together).
// "1": always, "forward" / "backward": in that pass only, "0": never.
constexpr int kWideMinClusters = 3;
inline bool wide_allowed(bool backward, const Plan& wide, const multi::Plan* l2, int sm_count) {
  const char* v = std::getenv("FLASHRNN_WIDE");
  if (v == nullptr || std::strcmp(v, "") == 0)
    return l2 == nullptr || l2->waves() != 1 || wide.groups * wide.heads >= kWideMinClusters ||
           (backward && l2->ctas > sm_count);
  return std::strcmp(v, "1") == 0 || std::strcmp(v, backward ? "backward" : "forward") == 0;
}

// Whether the wide cluster kernels take this shape: their plan (into `wide`) succeeds and
// wide_allowed; `l2` and `sm_count` as there.
inline bool wide_takes(Plan& wide, bool backward, int gates_r, int esize, long long batch, long long heads,
                       long long head_dim, int smem_per_block, const multi::Plan* l2, int sm_count) {
  return make_wide_plan(wide, backward, gates_r, esize, batch, heads, head_dim, smem_per_block) == nullptr &&
         wide_allowed(backward, wide, l2, sm_count);
}

// How many clusters of `size` CTAs of `kernel` (at config's block and shared-memory sizes) the
// device holds at once; 0 where it holds none or the query fails. Leaves config with the
// cluster-dimension attribute `attr` as its only attribute.
template <class... Params>
int max_active_clusters(void (*kernel)(Params...), cudaLaunchConfig_t& config, cudaLaunchAttribute& attr, int size) {
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = unsigned(size);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return clusters;
}

// Prepares `kernel` and `config` for clusters of plan.size CTAs of plan.threads with `smem` bytes
// each over (size, groups + worker_groups, heads), and returns how many such clusters the device
// holds at once (config's only attribute: the cluster dimension in `attr`); 0 where clusters cannot
// run: below sm_90, FLASHRNN_MULTI_L2, no cluster above 8 on this device or driver.
template <class... Params>
int resident_clusters(void (*kernel)(Params...), const Plan& plan, const DeviceLimits& device, int smem,
                      cudaLaunchConfig_t& config, cudaLaunchAttribute& attr) {
  if (device.cc_major < 9 || disabled()) return 0;
  FLASHRNN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (plan.size > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    (void)cudaGetLastError();  // this device or driver allows no cluster above 8
    return 0;
  }
  config = {};
  config.gridDim = dim3(unsigned(plan.size), unsigned(plan.groups + plan.worker_groups), unsigned(plan.heads));
  config.blockDim = dim3(unsigned(plan.threads));
  config.dynamicSmemBytes = size_t(smem);
  return max_active_clusters(kernel, config, attr, plan.size);
}

// Launches `kernel` over (size, groups, heads) CTAs in clusters of plan.size on `stream`. Returns
// false, launching nothing, where clusters cannot run: below sm_90, or where the device cannot
// hold one such cluster (e.g. 16 CTAs of this shared memory size).
// With plan.worker_groups > 0 the grid has that many more rows of clusters (CTAs that compute dR
// and db alongside the recurrence, waiting for its progress flags): the launch is cooperative, so
// every cluster is resident at once or the launch fails instead of hanging.
template <class... Params, class... Args>
bool launch_clusters(void (*kernel)(Params...), const Plan& plan, const DeviceLimits& device, cudaStream_t stream,
                     const char* name, const Args&... args) {
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attrs[2];  // the cluster dimension, cooperative
  const int resident = resident_clusters(kernel, plan, device, plan.smem, config, attrs[0]);
  if (resident < 1) return false;
  config.stream = stream;
  if (plan.worker_groups > 0) {
    FLASHRNN_CHECK(resident >= (plan.groups + plan.worker_groups) * plan.heads, name << ": the workers alongside do not fit");
    attrs[1].id = cudaLaunchAttributeCooperative;
    attrs[1].val.cooperative = 1;
    config.attrs = attrs;
    config.numAttrs = 2;
  }
  FLASHRNN_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
  FLASHRNN_CHECK_LAUNCH(name);
  return true;
}

// The rows of worker clusters that fit beside the plan's (at least `min_ctas` CTAs in all, each
// with `min_smem` bytes of shared memory: the plan's allocation is raised to it), or 0. Sets
// plan.worker_groups and plan.smem.
template <class... Params>
void plan_workers(void (*kernel)(Params...), Plan& plan, const DeviceLimits& device, int min_ctas, int min_smem) {
  plan.worker_groups = 0;
  const int smem = plan.smem > min_smem ? plan.smem : min_smem;
  if (smem > device.smem_per_block - fused::kSmemReserve) return;
  cudaLaunchConfig_t config;
  cudaLaunchAttribute attr;
  const int rows = resident_clusters(kernel, plan, device, smem, config, attr) / plan.heads - plan.groups;
  if (rows < 1 || rows * plan.heads * plan.size < min_ctas) return;
  plan.worker_groups = rows;
  plan.smem = smem;
}

}  // namespace flashrnn::cluster
