// Maps (family, cell, dtype, head dim) to a compiled launcher, and sizes the scratch buffers.
#include "core.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "../common/check.h"
#include "../kernels/fused/tuning.h"
#include "../kernels/multi/cluster_launch.h"
#include "../kernels/multi/plan.h"
#include "../kernels/multi/switches.h"
#include "../kernels/weight_grad/sizes.h"
#include "launchers.h"

namespace flashrnn {

namespace {

// Cell constants, mirrored from the cell headers (csrc/kernels/cells) so this TU stays host-only;
// a test compares them with python/flashrnn/_cells.py.
CellInfo info_of(CellKind cell) {
  switch (cell) {
    case CellKind::kLstm: return {"lstm", 4, 4, 4, 2, 4};
    case CellKind::kGru: return {"gru", 3, 3, 4, 1, 4};
    case CellKind::kElman: return {"elman", 1, 1, 1, 1, 1};
    case CellKind::kSlstm: return {"slstm", 4, 4, 4, 4, 5};
  }
  throw Error("flashrnn: unknown cell code " + std::to_string(int(cell)));
}

template <class T, class F>
void with_cell(CellKind cell, F&& f) {
  switch (cell) {
    case CellKind::kLstm: return f.template operator()<cells::Lstm, T>();
    case CellKind::kGru: return f.template operator()<cells::Gru, T>();
    case CellKind::kElman: return f.template operator()<cells::Elman, T>();
    case CellKind::kSlstm: return f.template operator()<cells::Slstm, T>();
  }
  throw Error("flashrnn: unknown cell code " + std::to_string(int(cell)));
}

template <class F>
void with_cell_and_dtype(CellKind cell, DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return with_cell<float>(cell, f);
    case DType::kFloat16: return with_cell<__half>(cell, f);
    case DType::kBFloat16: return with_cell<__nv_bfloat16>(cell, f);
  }
  throw Error("flashrnn: unknown dtype code " + std::to_string(int(dtype)));
}

// Calls f.template operator()<kHeadDim>() for a compiled bucket of element type T. The 128 bucket
// exists for 16-bit types only; `if constexpr` keeps the fp32 instantiation from referring to a
// launcher that was never compiled (a runtime check left that to the optimizer, and a module built
// with g++ 13 kept the reference and failed to import).
template <class T, class F>
void with_bucket(int bucket, F&& f) {
  switch (bucket) {
    case 16: return f.template operator()<16>();
    case 32: return f.template operator()<32>();
    case 64: return f.template operator()<64>();
    case 128:
      if constexpr (!std::is_same_v<T, float>) return f.template operator()<128>();
      break;
  }
  throw Error("flashrnn: no fused kernel for head-dim bucket " + std::to_string(bucket));
}

// Makes `device` current for the launches and restores the caller's device afterwards, so the
// core never changes what torch sees as the current device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FLASHRNN_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) FLASHRNN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

DeviceLimits limits_of(int device) {
  DeviceLimits d;
  FLASHRNN_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FLASHRNN_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
  FLASHRNN_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  FLASHRNN_CUDA_CHECK(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, device));
  return d;
}

int element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

void check_head_dim(int64_t head_dim) {
  FLASHRNN_CHECK(head_dim > 0 && head_dim % 16 == 0, "head_dim " << head_dim << " is not a multiple of 16");
}

}  // namespace

CellInfo cell_info(CellKind cell) { return info_of(cell); }

namespace {
// The single-CTA bucket that holds head_dim and whose kernels fit the device's shared memory, or 0.
int bucket_that_fits(CellKind cell, DType dtype, int64_t head_dim, const DeviceLimits& limits) {
  const CellInfo c = info_of(cell);
  if (head_dim > 1 << 20) return 0;
  const int bucket = fused::bucket_for(int(head_dim), dtype == DType::kFloat32);
  if (bucket == 0) return 0;
  const int limit = limits.smem_per_block, esize = element_size(dtype);
  const bool fits = fused::forward_layout(bucket, esize, c.gates_w, c.states + c.saved).stages(limit) >= 2 &&
                    fused::backward_layout(bucket, esize, c.gates_b, c.saved, c.states).stages(limit) >= 2;
  return fits ? bucket : 0;
}

// Whether sm_90's cluster kernels run this backward (multi_backward.cuh: the cluster variant, else
// its wide form where wide_allowed), the L2 variant's plan being `l2`. By their plans: a launch that
// finds its clusters do not fit the device runs the L2 variant.
bool clusters_run_backward(const CellInfo& c, DType dtype, int64_t batch, int64_t heads, int64_t head_dim,
                           const DeviceLimits& d, const multi::Plan& l2) {
  if (d.cc_major < 9 || cluster::disabled()) return false;
  const int esize = element_size(dtype);
  cluster::Plan p;
  if (cluster::make_plan(p, true, c.gates_r, esize, batch, heads, head_dim, d.smem_per_block) == nullptr) return true;
  return cluster::wide_takes(p, true, c.gates_r, esize, batch, heads, head_dim, d.smem_per_block, &l2, d.sm_count);
}
}  // namespace

int fused_bucket(CellKind cell, DType dtype, int64_t head_dim, int device) {
  return bucket_that_fits(cell, dtype, head_dim, limits_of(device));
}

std::vector<int> fused_buckets(DType dtype) {
  if (dtype == DType::kFloat32) return {std::begin(fused::kBucketsFloat), std::end(fused::kBucketsFloat)};
  return {std::begin(fused::kBucketsHalf), std::end(fused::kBucketsHalf)};
}

Family fused_family(CellKind cell, DType dtype, int64_t batch, int64_t heads, int64_t head_dim, int device,
                    bool backward, std::string& why) {
  const CellInfo c = info_of(cell);
  const DeviceLimits d = limits_of(device);
  if (bucket_that_fits(cell, dtype, head_dim, d) != 0) return Family::kFused;
  multi::Plan plan;
  const char* reason = multi::make_plan(plan, backward, c.gates_r, element_size(dtype), batch, heads, head_dim,
                                        d.smem_per_block, d.smem_per_sm, d.sm_count,
                                        backward && multi::backward_ring(d));  // as the launch plans it
  // Where one head's CTAs for one batch group outnumber the SMs (two of them share an SM) or the
  // (head, batch group) pairs run in waves (plan.h), the L2 variant's forward still beats the
  // alternating kernels, its backward does not (H100, LSTM bf16, T = 1024, ms, L2 variant against
  // alternating, 2026-12-06):
  //   forward:  2048 x 1 B = 16 15.0 / 18.2, 1536 x 1 B = 32 17.5 / 26.9, 1024 x 3 B = 16 (waves)
  //             10.2 / 19.4, 2048 x 1 B = 64 (waves) 58.6 / 65.9;
  //   backward: 2048 x 1 B = 16 62.1 / 39.1, 1536 x 1 B = 16 31.0 / 29.5, 1536 x 1 B = 32 61.6 / 44.1,
  //             1024 x 3 B = 16 (waves) 43.7 / 33.9, 2048 x 1 B = 64 (waves) 252.6 / 155.4;
  //   (at 128 CTAs per head and group the L2 backward wins: 1024 x 1 B = 16 8.3 / 18.9, B = 64
  //   (two groups, 256 CTAs) 48.1 / 53.6).
  // So there the backward runs the alternating kernels, as a choice (`why` stays empty), unless
  // sm_90's cluster kernels take it.
  if (reason == nullptr && backward && (plan.waves() > 1 || plan.slices > d.sm_count) &&
      !multi::multi_backward_forced() && !clusters_run_backward(c, dtype, batch, heads, head_dim, d, plan)) {
    why.clear();
    return Family::kAlternating;
  }
  if (reason == nullptr) return Family::kMulti;
  why = reason;
  return Family::kAlternating;
}

int64_t forward_workspace_floats(Family family, CellKind cell, DType dtype, int64_t batch, int64_t heads,
                                 int64_t head_dim) {
  // The alternating family carries the fp32 states between launches; the fused one in registers;
  // the multi-CTA one needs its h exchange and progress flags (32-bit words).
  if (family == Family::kMulti) {
    const int esize = element_size(dtype);
    return multi::exchange_words(batch, heads, head_dim, esize) + multi::flag_words(batch, heads, head_dim);
  }
  return family == Family::kAlternating ? info_of(cell).states * batch * heads * head_dim : 0;
}

int64_t backward_workspace_floats(Family family, CellKind cell, DType dtype, int64_t batch, int64_t steps,
                                  int64_t heads, int64_t head_dim) {
  const CellInfo c = info_of(cell);
  const int64_t partials =
      family == Family::kMulti
          ? weight_grad::multi_scratch_floats(steps * batch, c.gates_r, c.gates_b, heads, head_dim)
          : weight_grad::scratch_floats(steps * batch, c.gates_r, c.gates_b, heads, head_dim);
  const int64_t carry = family == Family::kAlternating ? c.states * batch * heads * head_dim : 0;
  // The multi-CTA family: its progress flags, then its dg exchange.
  const int64_t exchange = family == Family::kMulti
                               ? multi::flag_words(batch, heads, head_dim) +
                                     multi::dg_exchange_words(batch, heads, head_dim, c.gates_r, element_size(dtype))
                               : 0;
  return carry + partials + exchange;
}

int64_t backward_rt_elements(Family family, CellKind cell, int64_t heads, int64_t head_dim) {
  return family == Family::kAlternating ? info_of(cell).gates_r * heads * head_dim * head_dim : 0;
}

namespace {

// Runs `alternating.operator()<Cell, T>()` or `fused.operator()<Cell, T, kHeadDim>(limits)` for
// the compiled instantiation that matches (family, cell, dtype, head dim), on `device`.
template <class Params, class Alternating, class Fused, class Multi>
void dispatch(Family family, CellKind cell, DType dtype, int device, const Params& p, Alternating&& alternating,
              Fused&& fused, Multi&& multi) {
  check_head_dim(p.head_dim);
  DeviceGuard guard(device);
  if (family == Family::kAlternating) return with_cell_and_dtype(cell, dtype, alternating);
  const DeviceLimits limits = limits_of(device);
  if (family == Family::kMulti) {
    return with_cell_and_dtype(cell, dtype, [&]<class C, class T>() { multi.template operator()<C, T>(limits); });
  }
  const int bucket = bucket_that_fits(cell, dtype, p.head_dim, limits);
  FLASHRNN_CHECK(bucket != 0, "no fused kernel for head_dim " << p.head_dim << " on device " << device);
  with_cell_and_dtype(cell, dtype, [&]<class C, class T>() {
    with_bucket<T>(bucket, [&]<int kHeadDim>() { fused.template operator()<C, T, kHeadDim>(limits); });
  });
}

}  // namespace

multi::BackwardLaunch multi_backward_launch(CellKind cell, DType dtype, int device, int64_t batch, int64_t steps,
                                            int64_t heads, int64_t head_dim) {
  BackwardParams p;
  p.batch = batch;
  p.steps = steps;
  p.heads = heads;
  p.head_dim = head_dim;
  DeviceGuard guard(device);
  const DeviceLimits limits = limits_of(device);
  multi::BackwardLaunch launch;
  with_cell_and_dtype(cell, dtype, [&]<class C, class T>() { launch = multi_backward_launch<C, T>(p, limits); });
  return launch;
}

void forward(Family family, CellKind cell, DType dtype, int device, const ForwardParams& p, cudaStream_t stream) {
  dispatch(
      family, cell, dtype, device, p, [&]<class C, class T>() { launch_alternating_forward<C, T>(p, stream); },
      [&]<class C, class T, int kHeadDim>(const DeviceLimits& limits) {
        launch_fused_forward<C, T, kHeadDim>(p, limits, stream);
      },
      [&]<class C, class T>(const DeviceLimits& limits) { launch_multi_forward<C, T>(p, limits, stream); });
}

void backward(Family family, CellKind cell, DType dtype, int device, const BackwardParams& p, cudaStream_t stream) {
  dispatch(
      family, cell, dtype, device, p, [&]<class C, class T>() { launch_alternating_backward<C, T>(p, stream); },
      [&]<class C, class T, int kHeadDim>(const DeviceLimits& limits) {
        launch_fused_backward<C, T, kHeadDim>(p, limits, stream);
      },
      [&]<class C, class T>(const DeviceLimits& limits) { launch_multi_backward<C, T>(p, limits, stream); });
}

}  // namespace flashrnn
