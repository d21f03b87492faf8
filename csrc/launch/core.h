// The core's host API: what the pybind11 module exposes. No torch types; pointers and sizes only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../common/params.h"
#include "../kernels/multi/plan.h"

namespace flashrnn {

// kFused: one CTA per (head, batch tile) (head dims of the fused buckets); kMulti: a head's units
// spread over several CTAs (larger heads): one thread-block cluster on sm_90 where the head fits
// one (kernels/multi/cluster_plan.h), else co-resident CTAs exchanging through L2 (plan.h).
enum class Family : int { kAlternating = 0, kFused = 1, kMulti = 2 };

struct CellInfo {
  std::string name;
  int gates_r, gates_w, gates_b, states, saved;
};

CellInfo cell_info(CellKind cell);

// The compiled head-dim bucket that runs this head dim fused on `device`, or 0 if none does
// (no bucket holds it, or the kernels need more shared memory than the device offers).
int fused_bucket(CellKind cell, DType dtype, int64_t head_dim, int device);
std::vector<int> fused_buckets(DType dtype);

// Which fused family runs this shape on `device`: kFused, kMulti, or kAlternating when neither
// does, with the reason in `why`, or (`why` empty) where the alternating kernels measured faster
// (some multi-CTA backwards, core.cpp). The forward and the backward pass are planned separately.
Family fused_family(CellKind cell, DType dtype, int64_t batch, int64_t heads, int64_t head_dim, int device,
                    bool backward, std::string& why);

// Scratch the launchers need, allocated by the caller (torch) and passed in the params.
int64_t forward_workspace_floats(Family family, CellKind cell, DType dtype, int64_t batch, int64_t heads,
                                 int64_t head_dim);
int64_t backward_workspace_floats(Family family, CellKind cell, DType dtype, int64_t batch, int64_t steps,
                                  int64_t heads, int64_t head_dim);
int64_t backward_rt_elements(Family family, CellKind cell, int64_t heads, int64_t head_dim);

// How the multi-CTA backward's L2 variant launches on `device`: CTAs that compute dR and db
// alongside its recurrence (kernels/weight_grad/alongside.cuh; 0 where weight_grad_kernel runs
// after it), a producer warp, the cluster size.
multi::BackwardLaunch multi_backward_launch(CellKind cell, DType dtype, int device, int64_t batch, int64_t steps,
                                            int64_t heads, int64_t head_dim);

// Launch on `stream` of `device`; nothing is allocated or synchronized.
void forward(Family family, CellKind cell, DType dtype, int device, const ForwardParams& p, cudaStream_t stream);
void backward(Family family, CellKind cell, DType dtype, int device, const BackwardParams& p, cudaStream_t stream);

}  // namespace flashrnn
