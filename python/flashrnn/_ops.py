"""The torch.library ops: namespace `flashrnn`, one forward and one backward op per cell and
kernel family, defined from one table so the cells cannot drift apart:

    torch.ops.flashrnn.<cell>_<family>(Wx, R, b, states0, need_saved=True, forward_clipval=None,
        recurrent_cut=False, recurrent_clipval=None, allow_tf32=False) -> (all_states, saved)
    torch.ops.flashrnn.<cell>_<family>_backward(grad_states, states, saved, R, recurrent_cut=False,
        recurrent_clipval=None, allow_tf32=False) -> (dg, dR, db, dstates0)

cell in {lstm, gru, elman, slstm}, family in {alternating, fused}. Internal layouts:
Wx [B, T, Gw, N, D] (B and T strides free), R [Gr, N, D, D], b [Gb, N, D], states0 [S, B, N, D];
all_states [S, T + 1, B, N, D] (index 0 = states0), saved [T, B, K, N, D] (empty unless
need_saved), dg [B, T, Gb, N, D] (batch-major like Wx, so dWx = dg[:, :, Gb - Gw:] needs no copy
when Wx is a contiguous [B, T, ...] tensor).
Each op has a CUDA kernel (the core), a CPU kernel (reference.py math), a fake kernel and
autograd. The backward options are arguments of the forward op so autograd can see them.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from . import _core, reference
from ._cells import CELLS, CellSpec

FAMILIES = ("alternating", "fused")  # the op families; a "fused" op runs one of two fused kernel families
KERNEL_FAMILIES = {"alternating": 0, "fused": 1, "multi": 2}  # codes of csrc/launch/core.h Family
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

FORWARD_SCHEMA = ("(Tensor Wx, Tensor R, Tensor b, Tensor states0, bool need_saved=True, "
                  "float? forward_clipval=None, bool recurrent_cut=False, float? recurrent_clipval=None, "
                  "bool allow_tf32=False) -> (Tensor, Tensor)")
BACKWARD_SCHEMA = ("(Tensor grad_states, Tensor states, Tensor saved, Tensor R, bool recurrent_cut=False, "
                   "float? recurrent_clipval=None, bool allow_tf32=False) -> (Tensor, Tensor, Tensor, Tensor)")

MAX_HEADS = 65535  # grid y (z for the multi-CTA kernels) is the head index
_lib = torch.library.Library("flashrnn", "DEF")
_warned: set = set()

# Debug aid for tests: fill every output with NaN before a kernel runs, so an element a kernel
# fails to write cannot pass unnoticed. Set FLASHRNN_POISON_OUTPUTS=1 or assign True.
POISON_OUTPUTS = os.environ.get("FLASHRNN_POISON_OUTPUTS", "") == "1"


def _new(like: torch.Tensor, shape) -> torch.Tensor:
    return like.new_full(shape, float("nan")) if POISON_OUTPUTS else like.new_empty(shape)


def op_name(function: str, family: str) -> str:
    return f"{function}_{family}"


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _check_cuda_inputs(name: str, *tensors: torch.Tensor) -> None:
    device = tensors[0].device
    major, minor = _capability(device.index)
    if major < 8:
        raise ValueError(f"flashrnn.{name}: the CUDA kernels need compute capability >= 8.0 (Ampere); "
                         f"{torch.cuda.get_device_name(device)} has {major}.{minor}; use backend='vanilla'")
    if tensors[0].dtype not in DTYPE_CODES:
        raise ValueError(f"flashrnn.{name}: the CUDA kernels run float32, float16 and bfloat16; got "
                         f"{tensors[0].dtype}; use backend='vanilla' for other dtypes")
    if tensors[-1].shape[1] > MAX_HEADS:
        raise ValueError(f"flashrnn.{name}: the CUDA kernels run at most {MAX_HEADS} heads (one grid row per "
                         f"head), got {tensors[-1].shape[1]}; use backend='vanilla' or fewer, larger heads")
    if tensors[-1].shape[-1] % 16 != 0:
        raise ValueError(f"flashrnn.{name}: the CUDA kernels need a head dim that is a multiple of 16, got "
                         f"{tensors[-1].shape[-1]}; flashrnn.flashrnn() pads other head dims for you")


def _as_kernel_input(Wx: torch.Tensor) -> torch.Tensor:
    """Wx with a contiguous [G, N, D] part and 16-byte aligned batch/time strides."""
    G, N, D = Wx.shape[2:]
    esize = Wx.element_size()
    ok = (Wx.stride()[2:] == (N * D, D, 1) and Wx.data_ptr() % 16 == 0
          and (Wx.stride(0) * esize) % 16 == 0 and (Wx.stride(1) * esize) % 16 == 0)
    return Wx if ok else Wx.contiguous()


def _family_for(spec: CellSpec, family: str, x: torch.Tensor, B: int, N: int, D: int, core, backward: bool) -> str:
    """The kernel family that runs this call: "alternating", "fused" (one CTA per head and batch
    tile) or "multi" (a head spread over co-resident CTAs). A fused op whose shape neither fused
    family runs falls back to the alternating kernels, with one warning per shape; no warning where
    the core chose them as the faster kernels (`why` empty: some multi-CTA backwards)."""
    if family != "fused":
        return family
    code, why = core.fused_family(spec.code, DTYPE_CODES[x.dtype], B, N, D, x.device.index, backward)
    if code == KERNEL_FAMILIES["alternating"]:
        key = (spec.name, x.dtype, B, N, D, x.device.index, backward)
        if why and key not in _warned:
            _warned.add(key)
            warnings.warn(f"flashrnn: no fused kernel for {spec.name} with head_dim={D}, {N} heads, batch {B} in "
                          f"{x.dtype} on {torch.cuda.get_device_name(x.device)} ({'backward' if backward else 'forward'}"
                          f" pass): {why}; running the alternating kernels instead", stacklevel=3)
        return "alternating"
    return "fused" if code == KERNEL_FAMILIES["fused"] else "multi"


def autograd_rule(spec: CellSpec, name: str):
    """(backward, setup_context) for torch.library's register_autograd of op `name`: saves R, the
    states and the saved values; the backward op gives dg, of which dWx is a slice."""
    Gb, Gw = spec.gates_b, spec.gates_w

    def setup_context(ctx, inputs, output):
        _, R, _, _, need_saved, _, recurrent_cut, recurrent_clipval, allow_tf32 = inputs
        all_states, saved = output
        ctx.mark_non_differentiable(saved)
        # No zero-filled gradient for `saved` (T * B * K * N * D values, never read): the
        # backward gets None for it, and for the states when nothing depends on them.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(R, all_states, saved)
        ctx.options = (need_saved, recurrent_cut, recurrent_clipval, allow_tf32)

    def backward(ctx, grad_states, grad_saved):
        need_saved, recurrent_cut, recurrent_clipval, allow_tf32 = ctx.options
        if not need_saved:
            raise RuntimeError(f"flashrnn.{name}: the forward ran with need_saved=False, so nothing was "
                               "saved for the backward pass; call it with need_saved=True")
        R, all_states, saved = ctx.saved_tensors
        if grad_states is None:
            grad_states = torch.zeros_like(all_states)
        dg, dR, db, d0 = getattr(torch.ops.flashrnn, name + "_backward")(
            grad_states, all_states, saved, R, recurrent_cut, recurrent_clipval, allow_tf32)
        return dg[:, :, Gb - Gw:], dR, db, d0, None, None, None, None, None

    return backward, setup_context


def _register(spec: CellSpec, family: str) -> None:
    name = op_name(spec.name, family)
    qual, qual_bw = f"flashrnn::{name}", f"flashrnn::{name}_backward"
    torch.library.define(qual, FORWARD_SCHEMA, lib=_lib)
    torch.library.define(qual_bw, BACKWARD_SCHEMA, lib=_lib)
    S, K, Gb = spec.states, spec.saved, spec.gates_b

    def forward_cuda(Wx, R, b, states0, need_saved=True, forward_clipval=None, recurrent_cut=False,
                     recurrent_clipval=None, allow_tf32=False):
        core = _core.require_cuda_core("cuda" if family == "alternating" else "cuda_fused")
        _check_cuda_inputs(name, Wx, R)
        B, T, _, N, D = Wx.shape
        Wx, R, b = _as_kernel_input(Wx), R.contiguous(), b.contiguous()
        fam = KERNEL_FAMILIES[_family_for(spec, family, Wx, B, N, D, core, backward=False)]
        all_states = _new(Wx, (S, T + 1, B, N, D))
        all_states[:, 0].copy_(states0)
        saved = _new(Wx, (T, B, K, N, D) if need_saved else (0,))
        workspace = torch.empty(core.forward_workspace_floats(fam, spec.code, DTYPE_CODES[Wx.dtype], B, N, D),
                                dtype=torch.float32, device=Wx.device)
        # The core makes Wx's device current for its launches and restores the caller's.
        core.forward(fam, spec.code, DTYPE_CODES[Wx.dtype], Wx.device.index, B, T, N, D,
                     Wx.data_ptr(), Wx.stride(0), Wx.stride(1), R.data_ptr(), b.data_ptr(),
                     all_states.data_ptr(), saved.data_ptr() if need_saved else 0, workspace.data_ptr(),
                     forward_clipval is not None, float(forward_clipval or 0.0), allow_tf32,
                     torch.cuda.current_stream(Wx.device).cuda_stream)
        return all_states, saved

    def backward_cuda(grad_states, states, saved, R, recurrent_cut=False, recurrent_clipval=None,
                      allow_tf32=False):
        core = _core.require_cuda_core("cuda" if family == "alternating" else "cuda_fused")
        _check_cuda_inputs(name + "_backward", states, R)
        _, T1, B, N, D = states.shape
        T = T1 - 1
        grad_states, R = grad_states.contiguous(), R.contiguous()
        fam = KERNEL_FAMILIES[_family_for(spec, family, states, B, N, D, core, backward=True)]
        dg = _new(states, (B, T, Gb, N, D))
        dR, db, d0 = _new(R, R.shape), _new(states, (Gb, N, D)), _new(states, (S, B, N, D))
        workspace = torch.empty(core.backward_workspace_floats(fam, spec.code, DTYPE_CODES[states.dtype], B, T, N, D),
                                dtype=torch.float32, device=states.device)
        rt = states.new_empty((core.backward_rt_elements(fam, spec.code, N, D),))
        core.backward(fam, spec.code, DTYPE_CODES[states.dtype], states.device.index, B, T, N, D,
                      R.data_ptr(), states.data_ptr(), saved.data_ptr(), grad_states.data_ptr(),
                      dg.data_ptr(), dR.data_ptr(), db.data_ptr(), d0.data_ptr(), workspace.data_ptr(),
                      rt.data_ptr(), recurrent_cut, recurrent_clipval is not None,
                      float(recurrent_clipval or 0.0), allow_tf32, torch.cuda.current_stream(states.device).cuda_stream)
        return dg, dR, db, d0

    def forward_cpu(Wx, R, b, states0, need_saved=True, forward_clipval=None, recurrent_cut=False,
                    recurrent_clipval=None, allow_tf32=False):
        return reference.forward_op(spec, Wx, R, b, states0, need_saved, forward_clipval)

    def backward_cpu(grad_states, states, saved, R, recurrent_cut=False, recurrent_clipval=None,
                     allow_tf32=False):
        return reference.backward_op(spec, grad_states, states, saved, R, recurrent_cut, recurrent_clipval)

    def forward_fake(Wx, R, b, states0, need_saved=True, forward_clipval=None, recurrent_cut=False,
                     recurrent_clipval=None, allow_tf32=False):
        B, T, _, N, D = Wx.shape
        return (Wx.new_empty((S, T + 1, B, N, D)), Wx.new_empty((T, B, K, N, D) if need_saved else (0,)))

    def backward_fake(grad_states, states, saved, R, recurrent_cut=False, recurrent_clipval=None,
                      allow_tf32=False):
        _, T1, B, N, D = states.shape
        return (states.new_empty((B, T1 - 1, Gb, N, D)), torch.empty_like(R), states.new_empty((Gb, N, D)),
                states.new_empty((S, B, N, D)))

    backward, setup_context = autograd_rule(spec, name)

    torch.library.impl(qual, "CUDA", forward_cuda, lib=_lib)
    torch.library.impl(qual, "CPU", forward_cpu, lib=_lib)
    torch.library.register_fake(qual, forward_fake, lib=_lib)
    torch.library.impl(qual_bw, "CUDA", backward_cuda, lib=_lib)
    torch.library.impl(qual_bw, "CPU", backward_cpu, lib=_lib)
    torch.library.register_fake(qual_bw, backward_fake, lib=_lib)
    torch.library.register_autograd(qual, backward, setup_context=setup_context, lib=_lib)


for _spec in CELLS.values():
    for _family in FAMILIES:
        _register(_spec, _family)


def get_op(function: str, family: str):
    return getattr(torch.ops.flashrnn, op_name(function, family))
