// flashrnn._C: the pybind11 module over the CUDA core. It takes raw device pointers, sizes,
// element strides, a dtype code and the cudaStream_t of torch's current stream; it never sees a
// torch type, so one build serves every torch version. Errors become Python RuntimeErrors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#ifndef FLASHRNN_VERSION
#define FLASHRNN_VERSION "0.0.0"
#endif
#ifndef FLASHRNN_CUDA_ARCH_LIST
#define FLASHRNN_CUDA_ARCH_LIST ""
#endif

#if FLASHRNN_WITH_CUDA
#include "../kernels/multi/cluster_plan.h"
#include "../kernels/multi/plan.h"
#include "../launch/core.h"
namespace flashrnn {
bool kernel_image_available(int device, std::string& why);
}
#endif

namespace py = pybind11;

namespace {

#if FLASHRNN_WITH_CUDA
using flashrnn::CellKind;
using flashrnn::DType;
using flashrnn::Family;

template <class P>
P* ptr(std::uintptr_t address) {
  return reinterpret_cast<P*>(address);
}

void forward(int family, int cell, int dtype, int device, int64_t batch, int64_t steps, int64_t heads,
             int64_t head_dim, std::uintptr_t wx, int64_t wx_stride_b, int64_t wx_stride_t, std::uintptr_t r,
             std::uintptr_t bias, std::uintptr_t states, std::uintptr_t saved, std::uintptr_t workspace,
             bool forward_clip, double forward_clip_value, bool allow_tf32, std::uintptr_t stream) {
  flashrnn::ForwardParams p;
  p.batch = batch; p.steps = steps; p.heads = heads; p.head_dim = head_dim;
  p.wx = ptr<const void>(wx); p.wx_stride_b = wx_stride_b; p.wx_stride_t = wx_stride_t;
  p.r = ptr<const void>(r); p.bias = ptr<const void>(bias);
  p.states = ptr<void>(states); p.saved = ptr<void>(saved); p.workspace = ptr<float>(workspace);
  p.forward_clip = forward_clip; p.forward_clip_value = float(forward_clip_value);
  p.allow_tf32 = allow_tf32;
  flashrnn::forward(Family(family), CellKind(cell), DType(dtype), device, p, ptr<CUstream_st>(stream));
}

void backward(int family, int cell, int dtype, int device, int64_t batch, int64_t steps, int64_t heads,
              int64_t head_dim, std::uintptr_t r, std::uintptr_t states, std::uintptr_t saved,
              std::uintptr_t grad_states, std::uintptr_t dg, std::uintptr_t dr, std::uintptr_t dbias,
              std::uintptr_t dstates0, std::uintptr_t workspace, std::uintptr_t workspace_rt, bool recurrent_cut,
              bool recurrent_clip, double recurrent_clip_value, bool allow_tf32, std::uintptr_t stream) {
  flashrnn::BackwardParams p;
  p.batch = batch; p.steps = steps; p.heads = heads; p.head_dim = head_dim;
  p.r = ptr<const void>(r); p.states = ptr<const void>(states); p.saved = ptr<const void>(saved);
  p.grad_states = ptr<const void>(grad_states);
  p.dg = ptr<void>(dg); p.dr = ptr<void>(dr); p.dbias = ptr<void>(dbias); p.dstates0 = ptr<void>(dstates0);
  p.workspace = ptr<float>(workspace); p.workspace_rt = ptr<void>(workspace_rt);
  p.recurrent_cut = recurrent_cut; p.recurrent_clip = recurrent_clip;
  p.recurrent_clip_value = float(recurrent_clip_value);
  p.allow_tf32 = allow_tf32;
  flashrnn::backward(Family(family), CellKind(cell), DType(dtype), device, p, ptr<CUstream_st>(stream));
}
#else
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "flashrnn was built without CUDA (nvcc was not found when the package was built), so the CUDA "
      "backends are not available; use backend=\"vanilla\" or reinstall with nvcc on PATH");
}
#endif

py::dict build_info() {
  py::dict d;
  d["version"] = FLASHRNN_VERSION;
  d["with_cuda"] = bool(FLASHRNN_WITH_CUDA);
  py::list archs;
  std::string list = FLASHRNN_CUDA_ARCH_LIST, item;
  for (char ch : list + ",") {
    if (ch == ',') {
      if (!item.empty()) archs.append(item);
      item.clear();
    } else {
      item += ch;
    }
  }
  d["cuda_archs"] = archs;
#if FLASHRNN_WITH_CUDA
  d["cuda_runtime_version"] = CUDART_VERSION;
  py::dict buckets;
  buckets["float32"] = flashrnn::fused_buckets(DType::kFloat32);
  buckets["float16"] = flashrnn::fused_buckets(DType::kFloat16);
  buckets["bfloat16"] = flashrnn::fused_buckets(DType::kBFloat16);
  d["fused_head_dims"] = buckets;
#else
  d["cuda_runtime_version"] = 0;
  d["fused_head_dims"] = py::dict();
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashrnn CUDA core (pointers, sizes and a stream in; no torch types)";
  m.def("build_info", &build_info, "version, CUDA archs and fused head-dim buckets of this build");
#if FLASHRNN_WITH_CUDA
  m.def("cell_info", [](int cell) {
    const flashrnn::CellInfo c = flashrnn::cell_info(CellKind(cell));
    py::dict d;
    d["name"] = c.name; d["gates_r"] = c.gates_r; d["gates_w"] = c.gates_w; d["gates_b"] = c.gates_b;
    d["states"] = c.states; d["saved"] = c.saved;
    return d;
  });
  m.def("fused_bucket", [](int cell, int dtype, int64_t head_dim, int device) {
    return flashrnn::fused_bucket(CellKind(cell), DType(dtype), head_dim, device);
  });
  m.def("fused_family", [](int cell, int dtype, int64_t b, int64_t n, int64_t d, int device, bool backward) {
    std::string why;
    const Family f = flashrnn::fused_family(CellKind(cell), DType(dtype), b, n, d, device, backward, why);
    return py::make_tuple(int(f), why);
  }, "the family that runs this shape fused (1 one CTA per head, 2 multi-CTA), or 0 and why none does (empty: 0 by choice, faster)");
  m.def("multi_plan", [](bool backward, int gates_r, int esize, int64_t batch, int64_t heads, int64_t head_dim,
                         int smem_per_block, int smem_per_sm, int sm_count, bool ring, bool tagged, bool registers) {
    namespace multi = flashrnn::multi;
    multi::Plan p;
    const char* why = multi::make_plan(p, backward, gates_r, esize, batch, heads, head_dim, smem_per_block,
                                       smem_per_sm, sm_count, ring, tagged, registers);
    py::dict d;
    if (why != nullptr) {
      d["why"] = std::string(why);
      return d;
    }
    d["mt"] = p.mt; d["groups"] = p.groups; d["slices"] = p.slices; d["heads"] = p.heads;
    d["chunk_k"] = p.chunk_k; d["chunks"] = p.chunks; d["slots"] = p.slots; d["a_row"] = p.a_row; d["red_offset"] = p.red_offset;
    d["r_offset"] = p.r_offset; d["resident"] = p.resident; d["reg_ksteps"] = p.reg_ksteps; d["smem"] = p.smem; d["ctas"] = p.ctas;
    d["wave_groups"] = p.wave_groups; d["wave_heads"] = p.wave_heads; d["waves"] = p.waves(); d["tagged"] = p.tagged;
    d["exchange_words"] = multi::exchange_words(batch, heads, head_dim, esize);
    d["flag_words"] = multi::flag_words(batch, heads, head_dim);
    d["flag_spacing"] = multi::kFlagSpacing;
    d["dg_exchange_words"] = multi::dg_exchange_words(batch, heads, head_dim, gates_r, esize);
    return d;
  }, "the multi-CTA kernels' plan for the given device limits (pure arithmetic, no GPU), or {'why': ...}",
     py::arg("backward"), py::arg("gates_r"), py::arg("esize"), py::arg("batch"), py::arg("heads"), py::arg("head_dim"),
     py::arg("smem_per_block"), py::arg("smem_per_sm"), py::arg("sm_count"), py::arg("ring"),
     py::arg("tagged") = false, py::arg("registers") = true);
  m.def("copy_blocks", &flashrnn::multi::copy_blocks,
        "blocks per multicast copy of the multi-CTA kernels' staging (plan.h; forward 0: after every flag)");
  // A cluster plan as a dict, or {'why': ...} where make_plan / make_wide_plan refused the shape.
  auto cluster_plan_dict = [](const flashrnn::cluster::Plan& p, const char* why) {
    py::dict d;
    if (why != nullptr) {
      d["why"] = std::string(why);
      return d;
    }
    d["size"] = p.size; d["groups"] = p.groups; d["heads"] = p.heads; d["threads"] = p.threads; d["a_row"] = p.a_row;
    d["red_stride"] = p.red_stride; d["red_offset"] = p.red_offset; d["r_offset"] = p.r_offset; d["smem"] = p.smem;
    return d;
  };
  m.def("cluster_plan", [cluster_plan_dict](bool backward, int gates_r, int esize, int64_t batch, int64_t heads,
                                            int64_t head_dim, int smem_per_block) {
    flashrnn::cluster::Plan p;
    return cluster_plan_dict(
        p, flashrnn::cluster::make_plan(p, backward, gates_r, esize, batch, heads, head_dim, smem_per_block));
  }, "the sm_90 cluster variant's plan of the multi-CTA family (pure arithmetic), or {'why': ...}");
  m.def("cluster_wide_plan", [cluster_plan_dict](bool backward, int gates_r, int esize, int64_t batch, int64_t heads,
                                                 int64_t head_dim, int smem_per_block) {
    flashrnn::cluster::Plan p;
    py::dict d = cluster_plan_dict(
        p, flashrnn::cluster::make_wide_plan(p, backward, gates_r, esize, batch, heads, head_dim, smem_per_block));
    if (!d.contains("why")) d["register_ksteps"] = flashrnn::cluster::wide_register_ksteps(backward, gates_r);
    return d;
  }, "the sm_90 wide cluster kernels' plan (48 units per CTA, R partly in registers), or {'why': ...}");
  m.def("forward_workspace_floats", [](int family, int cell, int dtype, int64_t b, int64_t n, int64_t d) {
    return flashrnn::forward_workspace_floats(Family(family), CellKind(cell), DType(dtype), b, n, d);
  });
  m.def("backward_workspace_floats", [](int family, int cell, int dtype, int64_t b, int64_t t, int64_t n,
                                        int64_t d) {
    return flashrnn::backward_workspace_floats(Family(family), CellKind(cell), DType(dtype), b, t, n, d);
  });
  m.def("multi_backward_launch", [](int cell, int dtype, int device, int64_t b, int64_t t, int64_t n, int64_t d) {
    const auto launch = flashrnn::multi_backward_launch(CellKind(cell), DType(dtype), device, b, t, n, d);
    py::dict out;
    out["alongside_ctas"] = launch.alongside_ctas;
    out["producer"] = launch.producer;
    out["cluster"] = launch.cluster;
    return out;
  }, "How the multi-CTA backward (L2 variant) launches on the device: alongside_ctas (CTAs computing dR and db "
     "alongside its recurrence; 0: after it), producer (a warp staging the chunks), cluster (CTAs per cluster)");
  m.def("backward_rt_elements", [](int family, int cell, int64_t n, int64_t d) {
    return flashrnn::backward_rt_elements(Family(family), CellKind(cell), n, d);
  });
  m.def("kernel_image_available", [](int device) {
    std::string why;
    const bool ok = flashrnn::kernel_image_available(device, why);
    return py::make_tuple(ok, why);
  });
  m.def("forward", &forward, py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, py::call_guard<py::gil_scoped_release>());
#else
  m.def("forward", [](py::args, py::kwargs) { no_cuda(); });
  m.def("backward", [](py::args, py::kwargs) { no_cuda(); });
#endif
}
