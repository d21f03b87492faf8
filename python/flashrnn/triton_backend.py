"""The Triton backend (backend="triton"): ops torch.ops.flashrnn.<cell>_triton and
<cell>_triton_backward, with the schema, buffers and autograd of the CUDA ops in _ops.py, so the
two backends' forward and backward are interchangeable:

    <cell>_triton(Wx, R, b, states0, need_saved=True, forward_clipval=None, recurrent_cut=False,
        recurrent_clipval=None, allow_tf32=False) -> (all_states [S, T+1, B, N, D], saved [T, B, K, N, D])
    <cell>_triton_backward(grad_states, states, saved, R, recurrent_cut=False, recurrent_clipval=None,
        allow_tf32=False) -> (dg [B, T, Gb, N, D], dR, db, dstates0)

Kernels (spec 4.5, with the fixes of spec 3.3-3.5):
  _forward_kernel   one program per (head, tile of BATCH_TILE batch rows) runs all T steps. R_g of
                    every recurrent gate (as R_g^T tiles in the input dtype), the biases and the
                    states (fp32) stay on chip for the whole sequence. Per step t: issue the loads of
                    Wx_{t+1} (software pipelining by hand, one step ahead: they are carried to the next
                    iteration, so the wait for global memory overlaps this step's work), round h to
                    the input dtype, Gr tl.dot's [BATCH_TILE, D] x [D, D] accumulating in fp32 onto
                    Wx_t + b, pointwise cell math in fp32, store the states and the saved values. No
                    communication between programs, so a head's R must fit one program: D <= 128.
  _backward_kernel  the same grid, steps T..1: issues the loads of step t-1 (external gradient, saved
                    values, states; pipelined as in the forward), pointwise backward on those of step
                    t, stores dg, then Gr tl.dot's dg_t R_g into the gradient carried to h_{t-1}
                    (clipped / cut as reference.backward_op does).
  _recurrent_weight_grad_kernel  dR after the recurrence, parallel over T*B: fp32 partial sums per
                    (head, gate, row chunk), added by torch in a fixed order (deterministic).
db is a torch reduction of dg in fp32. CPU tensors run reference.forward_op/backward_op.

Triton is optional (CPU builds of torch do not bring it): this module imports without it, and
get_op() then raises a RuntimeError that says how to install it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from . import _ops, reference
from ._cells import CELLS, CellSpec

try:
    import triton
    import triton.language as tl
except ImportError:  # torch CPU builds; get_op() explains
    triton = tl = None

MAX_HEAD_DIM = 128   # 4 gates of R at D = 128 in bf16 are 128 KB: about what one SM holds on chip
BATCH_TILE = 16      # tl.dot needs M >= 16; one tile per program keeps per-step latency low
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Triton's software pipeliner stays off: left on (3 stages) it double-buffers R in shared memory (fp32
# LSTM D=64 backward: 132 KB instead of 68 KB) and has nothing to overlap, as the steps depend on each
# other. The recurrent kernels pipeline their per-step loads by hand instead, one step ahead.
RECURRENT_STAGES = 1

# Debug aid for tests, as in _ops.py: outputs start as NaN, so an element a kernel fails to write shows.
POISON_OUTPUTS = os.environ.get("FLASHRNN_POISON_OUTPUTS", "") == "1"

INSTALL_HINT = ("backend='triton' needs the `triton` package, which is not installed. It comes with the "
                "CUDA builds of torch (https://pytorch.org/get-started/locally/); or run `pip install triton`. "
                "backend='cuda' and 'cuda_fused' run without it")


def _jit(**options):
    """triton.jit when triton is importable; without it the kernels stay plain, never-called functions."""
    return (lambda fn: fn) if triton is None else (lambda fn: triton.jit(fn, **options))


# ---- cell math (fp32; the same formulas as reference.py) -------------------------------------
@_jit()
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@_jit()
def _tanh(x):
    # libdevice's tanh does not run in the interpreter; a form with abs/where made LLVM's SLP
    # vectorizer crash (triton 3.9, fp32 LSTM). Absolute error ~2e-7; saturates to +-1 cleanly.
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@_jit()
def _cell_forward(CELL: tl.constexpr, p0, p1, p2, p3, h, c, n, m):
    """Pre-activations p0..p3 and states (h, c, n, m) of step t-1 -> states of step t and the saved
    values v0..v4 (reference.py's `saved`; unused slots carry any value)."""
    if CELL == "elman":
        h = _tanh(p0)
        v0, v1, v2, v3, v4 = h, h, h, h, h
    elif CELL == "lstm":
        v0, v1, v2, v3 = _sigmoid(p0), _sigmoid(p1), _tanh(p2), _sigmoid(p3)
        c = v1 * c + v0 * v2
        h = v3 * _tanh(c)
        v4 = h
    elif CELL == "gru":
        # p0 = R_g h + b_g (the g~ gate), p3 = Wx_n + b_n; the reset gate scales all of g~
        r, z = _sigmoid(p1), _sigmoid(p2)
        n_new = _tanh(p3 + r * p0)
        h = z * h + (1.0 - z) * n_new
        v0, v1, v2, v3, v4 = p0, r, z, n_new, h
    else:  # slstm; m is a stabilizer (no gradient), the first-step rule is per element
        log_f = tl.minimum(p1, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(p1)))
        m_new = tl.where(n == 0.0, p0, tl.maximum(p0, log_f + m))
        v0 = tl.exp(p0 - m_new)
        v1 = tl.exp(log_f + m - m_new)
        v2, v3, v4 = _tanh(p2), _sigmoid(p3), _sigmoid(-p1)
        c = v1 * c + v0 * v2
        n = tl.maximum(v1 * n + v0, 1.0)
        h = v3 * c / n
        m = m_new
    return h, c, n, m, v0, v1, v2, v3, v4


@_jit()
def _cell_backward(CELL: tl.constexpr, dh, dc, dn, v0, v1, v2, v3, v4, h_prev, c_prev, n_prev, c, n):
    """Total gradients on (h, c, n) of step t -> (dg0..dg3, pointwise part of dh_{t-1}, dc_{t-1},
    dn_{t-1}); v0..v4 are the step's saved values, the states are read back rounded to the dtype. All
    in fp32 but v0..v4 and the states, which come as loaded (stored dtype) and are converted here."""
    v0, v1, v2, v3, v4 = v0.to(tl.float32), v1.to(tl.float32), v2.to(tl.float32), v3.to(tl.float32), v4.to(tl.float32)
    h_prev, c_prev, n_prev = h_prev.to(tl.float32), c_prev.to(tl.float32), n_prev.to(tl.float32)
    c, n = c.to(tl.float32), n.to(tl.float32)
    zero = tl.zeros_like(dh)
    if CELL == "elman":
        dg0 = dh * (1.0 - v0 * v0)
        dg1, dg2, dg3, dh_pointwise = zero, zero, zero, zero
    elif CELL == "lstm":
        tc = _tanh(c)
        dc = dc + dh * v3 * (1.0 - tc * tc)
        dg0 = dc * v2 * v0 * (1.0 - v0)
        dg1 = dc * c_prev * v1 * (1.0 - v1)
        dg2 = dc * v0 * (1.0 - v2 * v2)
        dg3 = dh * tc * v3 * (1.0 - v3)
        dh_pointwise = zero
        dc = dc * v1
    elif CELL == "gru":
        da = dh * (1.0 - v2) * (1.0 - v3 * v3)
        dg0 = da * v1
        dg1 = da * v0 * v1 * (1.0 - v1)
        dg2 = dh * (h_prev - v3) * v2 * (1.0 - v2)
        dg3 = da
        dh_pointwise = dh * v2
    else:  # slstm: v = (i, f, z, o, sigmoid(-f~)); m is a constant, max(u, 1) passes gradients
        dc = dc + dh * v3 / n
        dn = dn - dh * v3 * c / (n * n)
        dg0 = (dc * v2 + dn) * v0
        dg1 = (dc * c_prev + dn * n_prev) * v1 * v4
        dg2 = dc * v0 * (1.0 - v2 * v2)
        dg3 = dh * c / n * v3 * (1.0 - v3)
        dh_pointwise = zero
        dc = dc * v1
        dn = dn * v1
    return dg0, dg1, dg2, dg3, dh_pointwise, dc, dn


# ---- tile helpers -----------------------------------------------------------------------------
@_jit()
def _load_f32(ptrs, mask):
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@_jit()
def _store(ptrs, x, mask):
    tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


@_jit()
def _load_if(ptrs, mask, PRESENT: tl.constexpr, BB: tl.constexpr, DP: tl.constexpr):
    """A [BB, DP] fp32 tile, or zeros for a state/gate/saved slot the cell does not have."""
    x = tl.zeros((BB, DP), tl.float32)
    if PRESENT:
        x = _load_f32(ptrs, mask)
    return x


@_jit()
def _mask_if(mask, exists):
    """mask where the scalar `exists` holds, else all false. tl.where rather than `mask & exists`: in Triton's
    interpreter (3.9) a bool tile & a bool scalar is an int32 tile, which tl.load rejects as a mask."""
    return tl.where(exists, mask, False)


@_jit()
def _prefetch(ptrs, mask, PRESENT: tl.constexpr, BB: tl.constexpr, DP: tl.constexpr):
    """A [BB, DP] tile in its stored dtype, or zeros if not PRESENT: a load of the next step, issued a step
    ahead and carried by the loop. The caller converts it to fp32 where it is used, so no instruction
    waits for the load in the step that issues it."""
    x = tl.zeros((BB, DP), ptrs.dtype.element_ty)
    if PRESENT:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x


@_jit()
def _load_wx(x_ptrs, ND, mask, FIRST: tl.constexpr, GB: tl.constexpr, BB: tl.constexpr, DP: tl.constexpr):
    """The Wx tiles of one step for gates 0..3 (Wx feeds the last GW of the GB gates, from gate FIRST on;
    zeros for the others), in Wx's dtype."""
    x0 = _prefetch(x_ptrs + (0 - FIRST) * ND, mask, FIRST <= 0, BB, DP)
    x1 = _prefetch(x_ptrs + (1 - FIRST) * ND, mask, (FIRST <= 1) & (GB > 1), BB, DP)
    x2 = _prefetch(x_ptrs + (2 - FIRST) * ND, mask, (FIRST <= 2) & (GB > 2), BB, DP)
    x3 = _prefetch(x_ptrs + (3 - FIRST) * ND, mask, (FIRST <= 3) & (GB > 3), BB, DP)
    return x0, x1, x2, x3


@_jit()
def _load_backward_step(grads, states, saved, t, plane_size, state_stride, ND, mask, CELL: tl.constexpr,
                        S: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, DP: tl.constexpr):
    """What backward step t reads, none of it dependent on the recurrence, in the stored dtype: the external
    gradients on (h, c, n)_t, the saved values v0..v4 of step t, (h, c, n)_{t-1} and (c, n)_t. grads, states
    and saved point at the program's tile of grad_states[0, 0], all_states[0, 0] and saved[0]."""
    grad = grads + t * plane_size
    g_h = _prefetch(grad, mask, True, BB, DP)
    g_c = _prefetch(grad + state_stride, mask, S > 1, BB, DP)
    g_n = _prefetch(grad + 2 * state_stride, mask, S > 2, BB, DP)
    sv = saved + (t - 1) * plane_size * K
    v0 = _prefetch(sv, mask, True, BB, DP)
    v1 = _prefetch(sv + ND, mask, K > 1, BB, DP)
    v2 = _prefetch(sv + 2 * ND, mask, K > 2, BB, DP)
    v3 = _prefetch(sv + 3 * ND, mask, K > 3, BB, DP)
    v4 = _prefetch(sv + 4 * ND, mask, K > 4, BB, DP)
    cur = states + t * plane_size
    prev = cur - plane_size
    h_prev = _prefetch(prev, mask, CELL == "gru", BB, DP)
    c_prev = _prefetch(prev + state_stride, mask, S > 1, BB, DP)
    n_prev = _prefetch(prev + 2 * state_stride, mask, S > 2, BB, DP)
    c = _prefetch(cur + state_stride, mask, S > 1, BB, DP)
    n = _prefetch(cur + 2 * state_stride, mask, S > 2, BB, DP)
    return g_h, g_c, g_n, v0, v1, v2, v3, v4, h_prev, c_prev, n_prev, c, n


@_jit()
def _load_recurrent(r_head, g: tl.constexpr, PRESENT: tl.constexpr, gate_stride, offsets, mask):
    """R[g] of this head as a [DP, DP] tile in R's dtype, laid out by `offsets`, zero outside D x D.
    A placeholder (never read, so compiled away) unless PRESENT."""
    tile = tl.zeros(offsets.shape, r_head.dtype.element_ty)
    if PRESENT:
        tile = tl.load(r_head + g * gate_stride + offsets, mask=mask, other=0.0)
    return tile


@_jit()
def _preactivation(g: tl.constexpr, GR: tl.constexpr, hq, rt, x, bias, r_head, gate_stride, r_offsets, r_mask,
                   R_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr):
    """Gate g's pre-activation in fp32: Wx term (x in Wx's dtype, zeros if none) + b_g, plus h R_g^T for the
    first GR gates. Without R_ON_CHIP, R_g^T is loaded here, so only one gate's tile is live at a time."""
    acc = x.to(tl.float32) + bias[None, :]
    if g < GR:
        if not R_ON_CHIP:
            rt = _load_recurrent(r_head, g, True, gate_stride, r_offsets, r_mask)
        acc = tl.dot(hq, rt, acc, input_precision=PRECISION, out_dtype=tl.float32)
    return acc


@_jit()
def _recurrent_gradient(g: tl.constexpr, GR: tl.constexpr, carried, dg, keep, r, r_head, gate_stride, r_offsets,
                        r_mask, R_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr):
    """carried + dg_g R_g for the first GR gates. dg is rounded to the dtype as stored (reference.backward_op
    reads it back); units past D are zeroed so a NaN there (sLSTM's n = 0 in padding) cannot spread."""
    if g < GR:
        if not R_ON_CHIP:
            r = _load_recurrent(r_head, g, True, gate_stride, r_offsets, r_mask)
        dgq = tl.where(keep, dg, 0.0).to(r_head.dtype.element_ty)
        carried = tl.dot(dgq, r, carried, input_precision=PRECISION, out_dtype=tl.float32)
    return carried


# ---- kernels ----------------------------------------------------------------------------------
# B, T, N vary per call and stay runtime ints (no recompile per batch size); D is specialized only
# on divisibility by 16, which api.py's padding makes always true. Everything else is constexpr:
# cell, gate/state counts (fixed by the cell), head-dim bucket DP, options that change the code.
@_jit(do_not_specialize=["B", "T", "N"])
def _forward_kernel(wx_ptr, r_ptr, b_ptr, states_ptr, saved_ptr, B, T, N, D, stride_wx_b, stride_wx_t, clipval,
                    CELL: tl.constexpr, GR: tl.constexpr, GW: tl.constexpr, GB: tl.constexpr, S: tl.constexpr,
                    K: tl.constexpr, DP: tl.constexpr, BB: tl.constexpr, FORWARD_CLIP: tl.constexpr,
                    NEED_SAVED: tl.constexpr, R_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr):
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    units = tl.arange(0, DP)
    unit_ok = units < D
    mask = (rows < B)[:, None] & unit_ok[None, :]
    ND = N * D
    # int64 offsets: all_states and saved may exceed 2^31 elements
    plane = rows.to(tl.int64)[:, None] * ND + head * D + units[None, :]  # (row, unit) in a [B, N, D] plane
    plane_size = B.to(tl.int64) * ND
    saved_rows = rows.to(tl.int64)[:, None] * (K * ND) + head * D + units[None, :]  # in saved[t]
    x_rows = wx_ptr + rows.to(tl.int64)[:, None] * stride_wx_b + head * D + units[None, :]
    stride_t = stride_wx_t.to(tl.int64)
    dtype = r_ptr.dtype.element_ty

    # on chip for the whole sequence: R_g^T (unless too large, see _r_on_chip), the biases, and the
    # states in fp32 (spec 5.1)
    r_head = r_ptr + head.to(tl.int64) * D * D
    r_gate = N.to(tl.int64) * D * D
    r_offsets = units[None, :] * D + units[:, None]  # R_g^T: row j (input unit), column i (output unit)
    r_mask = unit_ok[:, None] & unit_ok[None, :]
    rt0 = _load_recurrent(r_head, 0, R_ON_CHIP & (GR > 0), r_gate, r_offsets, r_mask)
    rt1 = _load_recurrent(r_head, 1, R_ON_CHIP & (GR > 1), r_gate, r_offsets, r_mask)
    rt2 = _load_recurrent(r_head, 2, R_ON_CHIP & (GR > 2), r_gate, r_offsets, r_mask)
    rt3 = _load_recurrent(r_head, 3, R_ON_CHIP & (GR > 3), r_gate, r_offsets, r_mask)
    bias_ptrs = b_ptr + head * D + units
    b0 = _load_f32(bias_ptrs, unit_ok)
    b1 = _load_f32(bias_ptrs + 1 * ND, unit_ok & (GB > 1))
    b2 = _load_f32(bias_ptrs + 2 * ND, unit_ok & (GB > 2))
    b3 = _load_f32(bias_ptrs + 3 * ND, unit_ok & (GB > 3))
    state_stride = (T + 1) * plane_size  # all_states[s] -> all_states[s + 1]
    states = states_ptr + plane  # the program's tile of all_states[0, 0]
    h = _load_f32(states, mask)
    c = _load_if(states + state_stride, mask, S > 1, BB, DP)
    n = _load_if(states + 2 * state_stride, mask, S > 2, BB, DP)
    m = _load_if(states + 3 * state_stride, mask, S > 3, BB, DP)
    saved = saved_ptr + saved_rows  # and of saved[0]

    # Software pipelining by hand: steps depend on each other through h, Wx does not. Step t issues the
    # loads of Wx_{t+1} (carried to the next iteration; masked off past the end) before its products and
    # cell math, which then overlap the wait for global memory.
    first = GB - GW  # Wx feeds the last GW of the GB gates
    x0, x1, x2, x3 = _load_wx(x_rows, ND, _mask_if(mask, T > 0), first, GB, BB, DP)
    for t in range(T):
        next_x = x_rows + (t + 1) * stride_t
        next0, next1, next2, next3 = _load_wx(next_x, ND, _mask_if(mask, t + 1 < T), first, GB, BB, DP)
        hq = h.to(dtype)  # h in the input dtype feeds the product, as in the CUDA kernels
        p0 = _preactivation(0, GR, hq, rt0, x0, b0, r_head, r_gate, r_offsets, r_mask, R_ON_CHIP, PRECISION)
        p1 = _preactivation(1, GR, hq, rt1, x1, b1, r_head, r_gate, r_offsets, r_mask, R_ON_CHIP, PRECISION)
        p2 = _preactivation(2, GR, hq, rt2, x2, b2, r_head, r_gate, r_offsets, r_mask, R_ON_CHIP, PRECISION)
        p3 = _preactivation(3, GR, hq, rt3, x3, b3, r_head, r_gate, r_offsets, r_mask, R_ON_CHIP, PRECISION)
        h, c, n, m, v0, v1, v2, v3, v4 = _cell_forward(CELL, p0, p1, p2, p3, h, c, n, m)
        if FORWARD_CLIP:  # clamps the carried h too (spec 3.5); the backward passes straight through
            h = tl.minimum(tl.maximum(h, -clipval), clipval)

        out = states + (t + 1) * plane_size
        _store(out, h, mask)
        if S > 1:
            _store(out + state_stride, c, mask)
        if S > 2:
            _store(out + 2 * state_stride, n, mask)
        if S > 3:
            _store(out + 3 * state_stride, m, mask)
        if NEED_SAVED:
            sv = saved + t * plane_size * K
            _store(sv, v0, mask)
            if K > 1:
                _store(sv + ND, v1, mask)
            if K > 2:
                _store(sv + 2 * ND, v2, mask)
            if K > 3:
                _store(sv + 3 * ND, v3, mask)
            if K > 4:
                _store(sv + 4 * ND, v4, mask)
        x0, x1, x2, x3 = next0, next1, next2, next3


@_jit(do_not_specialize=["B", "T", "N"])
def _backward_kernel(grad_ptr, states_ptr, saved_ptr, r_ptr, dg_ptr, d0_ptr, B, T, N, D, clipval,
                     CELL: tl.constexpr, GR: tl.constexpr, GB: tl.constexpr, S: tl.constexpr, K: tl.constexpr,
                     DP: tl.constexpr, BB: tl.constexpr, RECURRENT_CUT: tl.constexpr,
                     RECURRENT_CLIP: tl.constexpr, R_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr):
    head = tl.program_id(0)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    units = tl.arange(0, DP)
    unit_ok = units < D
    mask = (rows < B)[:, None] & unit_ok[None, :]
    ND = N * D
    plane = rows.to(tl.int64)[:, None] * ND + head * D + units[None, :]
    plane_size = B.to(tl.int64) * ND
    saved_rows = rows.to(tl.int64)[:, None] * (K * ND) + head * D + units[None, :]
    dg_rows = rows.to(tl.int64)[:, None] * (T * GB * ND) + head * D + units[None, :]  # dg is [B, T, GB, N, D]
    state_stride = (T + 1) * plane_size

    # R_g stays on chip (unless too large, see _r_on_chip; not needed when the recurrent path is cut)
    r_head = r_ptr + head.to(tl.int64) * D * D
    r_gate = N.to(tl.int64) * D * D
    r_offsets = units[:, None] * D + units[None, :]  # R_g: row i (output unit), column j (input unit)
    r_mask = unit_ok[:, None] & unit_ok[None, :]
    r0 = _load_recurrent(r_head, 0, R_ON_CHIP & (not RECURRENT_CUT) & (GR > 0), r_gate, r_offsets, r_mask)
    r1 = _load_recurrent(r_head, 1, R_ON_CHIP & (not RECURRENT_CUT) & (GR > 1), r_gate, r_offsets, r_mask)
    r2 = _load_recurrent(r_head, 2, R_ON_CHIP & (not RECURRENT_CUT) & (GR > 2), r_gate, r_offsets, r_mask)
    r3 = _load_recurrent(r_head, 3, R_ON_CHIP & (not RECURRENT_CUT) & (GR > 3), r_gate, r_offsets, r_mask)
    keep = unit_ok[None, :]

    # carried: clip(R^T dg_{t+1} + pointwise term), the gradient reaching h_t from step t+1
    carried = tl.zeros((BB, DP), tl.float32)
    dc = tl.zeros((BB, DP), tl.float32)
    dn = tl.zeros((BB, DP), tl.float32)
    # software pipelined as the forward: step t (T down to 1) issues the loads of step t-1 before its own
    # work (masked off for step 0, which does not exist)
    grads, states, saved = grad_ptr + plane, states_ptr + plane, saved_ptr + saved_rows  # tiles of [0, 0] / [0]
    g_h, g_c, g_n, v0, v1, v2, v3, v4, h_prev, c_prev, n_prev, c, n = _load_backward_step(
        grads, states, saved, T, plane_size, state_stride, ND, _mask_if(mask, T >= 1), CELL, S, K, BB, DP)
    for i in range(T):
        t = T - i
        (next_g_h, next_g_c, next_g_n, next_v0, next_v1, next_v2, next_v3, next_v4, next_h_prev, next_c_prev,
         next_n_prev, next_c, next_n) = _load_backward_step(grads, states, saved, t - 1, plane_size, state_stride, ND,
                                                            _mask_if(mask, t - 1 >= 1), CELL, S, K, BB, DP)
        dh = carried + g_h.to(tl.float32)
        dc += g_c.to(tl.float32)
        dn += g_n.to(tl.float32)
        dg0, dg1, dg2, dg3, carried, dc, dn = _cell_backward(CELL, dh, dc, dn, v0, v1, v2, v3, v4, h_prev,
                                                             c_prev, n_prev, c, n)
        out = dg_ptr + (t - 1) * GB * ND + dg_rows
        _store(out, dg0, mask)
        if GB > 1:
            _store(out + ND, dg1, mask)
        if GB > 2:
            _store(out + 2 * ND, dg2, mask)
        if GB > 3:
            _store(out + 3 * ND, dg3, mask)
        if not RECURRENT_CUT:
            carried = _recurrent_gradient(0, GR, carried, dg0, keep, r0, r_head, r_gate, r_offsets, r_mask,
                                          R_ON_CHIP, PRECISION)
            carried = _recurrent_gradient(1, GR, carried, dg1, keep, r1, r_head, r_gate, r_offsets, r_mask,
                                          R_ON_CHIP, PRECISION)
            carried = _recurrent_gradient(2, GR, carried, dg2, keep, r2, r_head, r_gate, r_offsets, r_mask,
                                          R_ON_CHIP, PRECISION)
            carried = _recurrent_gradient(3, GR, carried, dg3, keep, r3, r_head, r_gate, r_offsets, r_mask,
                                          R_ON_CHIP, PRECISION)
        if RECURRENT_CLIP:  # before the external gradient of h_{t-1} is added (spec 3.4)
            carried = tl.minimum(tl.maximum(carried, -clipval), clipval)
        g_h, g_c, g_n, v0, v1, v2, v3, v4 = next_g_h, next_g_c, next_g_n, next_v0, next_v1, next_v2, next_v3, next_v4
        h_prev, c_prev, n_prev, c, n = next_h_prev, next_c_prev, next_n_prev, next_c, next_n

    # gradients of the initial states: the carried ones plus the external gradient at t = 0
    # (the m of sLSTM carries none: it is a stabilizer)
    _store(d0_ptr + plane, carried + _load_f32(grad_ptr + plane, mask), mask)
    if S > 1:
        _store(d0_ptr + plane_size + plane, dc + _load_f32(grad_ptr + state_stride + plane, mask), mask)
    if S > 2:
        _store(d0_ptr + 2 * plane_size + plane, dn + _load_f32(grad_ptr + 2 * state_stride + plane, mask), mask)
    if S > 3:
        _store(d0_ptr + 3 * plane_size + plane, _load_f32(grad_ptr + 3 * state_stride + plane, mask), mask)


@_jit(do_not_specialize=["rows", "T", "N", "chunk"])
def _recurrent_weight_grad_kernel(dg_ptr, h_ptr, out_ptr, rows, T, N, D, chunk, GR: tl.constexpr, GB: tl.constexpr,
                                  DP: tl.constexpr, BI: tl.constexpr, BT: tl.constexpr, PRECISION: tl.constexpr):
    """out[p, g, n, i, j] = sum over rows r of chunk p of dg[r, g, n, i] h[r, n, j] in fp32, for a BI-block
    of output units i; r = b * T + t runs over dg's rows, h = all_states[0, :T] (h_{t-1} of step t, row t * B + b)."""
    g = tl.program_id(0) % GR
    head = tl.program_id(0) // GR
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    j = tl.arange(0, DP)
    p = tl.program_id(2)
    ND = N * D
    acc = tl.zeros((BI, DP), tl.float32)
    start = p.to(tl.int64) * chunk
    for r0 in range(0, chunk, BT):
        r = start + r0 + tl.arange(0, BT)
        ok = (r < rows)[:, None]
        dg = tl.load(dg_ptr + (r[:, None] * GB + g) * ND + head * D + i[None, :], mask=ok & (i < D)[None, :],
                     other=0.0)
        h_row = (r % T) * (rows // T) + r // T
        h = tl.load(h_ptr + h_row[:, None] * ND + head * D + j[None, :], mask=ok & (j < D)[None, :], other=0.0)
        acc = tl.dot(tl.trans(dg), h, acc, input_precision=PRECISION, out_dtype=tl.float32)
    out = out_ptr + ((p * GR + g) * N + head).to(tl.int64) * D * D + i[:, None] * D + j[None, :]
    tl.store(out, acc, mask=(i < D)[:, None] & (j < D)[None, :])


# ---- launchers --------------------------------------------------------------------------------
def head_dim_bucket(D: int) -> int:
    """The power-of-two tile width (>= 16) that holds a head of dimension D; units past D are masked."""
    if D > MAX_HEAD_DIM:
        raise ValueError(f"flashrnn: backend='triton' runs head dims 1 to {MAX_HEAD_DIM} (one program keeps a "
                         f"head's whole R on chip), got head_dim={D}; use backend='cuda' or 'cuda_fused' for "
                         "larger heads")
    return max(16, 1 << (D - 1).bit_length())


def _num_warps(DP: int) -> int:
    # from 64 on, 8 warps: at 4, ptxas spills (bf16 sLSTM D=64: 344 B/thread at 4 warps, 0 at 8; 16 warps
    # cap registers at 128 and spill again at D=128). Measured with ptxas for sm_90, not timed.
    return 8 if DP >= 64 else 4


def _shared_memory_limit(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter has no limit
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def _r_on_chip(spec: CellSpec, dtype: torch.dtype, DP: int, device: torch.device) -> bool:
    """Whether a head's R stays in shared memory for the whole sequence (Triton keeps the loop-invariant
    R_g tiles there in the dot operand layout), or is streamed from L2 every step. Both recurrent
    kernels need Gr DP^2 elements plus at most 8 KB (ptxas for sm_90, Triton 3.9, num_stages=1, every
    cell/dtype/bucket). Streaming is needed for fp32 LSTM/sLSTM at D=128 on an H100 (227 KB) and for
    16-bit D=128 on GPUs with ~100 KB (sm_86/89)."""
    need = spec.gates_r * DP * DP * (torch.finfo(dtype).bits // 8) + 16 * 1024
    return need <= _shared_memory_limit(device)


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    # fp32 runs real fp32 products unless TF32 is allowed; ignored for bf16/fp16 operands
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def _on_device(x: torch.Tensor):
    """Triton launches on the current device; make it x's (a no-op for CPU tensors in the interpreter)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _check_inputs(name: str, *tensors: torch.Tensor) -> int:
    """The head-dim bucket; raises for dtypes or head dims the kernels do not run."""
    if tensors[0].dtype not in DTYPES or any(t.dtype != tensors[0].dtype for t in tensors):
        raise ValueError(f"flashrnn.{name}: the Triton kernels run float32, float16 and bfloat16 with one dtype "
                         f"for all inputs, got {[t.dtype for t in tensors]}; use backend='vanilla' for others")
    return head_dim_bucket(int(tensors[0].shape[-1]))  # int(): torch.compile specializes on D (it picks DP)


def _new(like: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    dtype = dtype or like.dtype
    return like.new_full(shape, float("nan"), dtype=dtype) if POISON_OUTPUTS else like.new_empty(shape, dtype=dtype)


def _as_kernel_input(Wx: torch.Tensor) -> torch.Tensor:
    """Wx with a contiguous [G, N, D] part; batch and time strides stay free."""
    G, N, D = Wx.shape[2:]
    return Wx if Wx.stride()[2:] == (N * D, D, 1) else Wx.contiguous()


def forward(spec: CellSpec, Wx, R, b, states0, need_saved: bool = True, forward_clipval=None,
            allow_tf32: bool = False, r_on_chip: Optional[bool] = None):
    """(all_states, saved) of reference.forward_op, computed by _forward_kernel. r_on_chip overrides
    _r_on_chip (tests run both variants)."""
    B, T, _, N, D = Wx.shape
    DP = _check_inputs(f"{spec.name}_triton", Wx, R, b, states0)
    Wx, R, b = _as_kernel_input(Wx), R.contiguous(), b.contiguous()
    all_states = _new(Wx, (spec.states, T + 1, B, N, D))
    all_states[:, 0].copy_(states0)
    saved = _new(Wx, (T, B, spec.saved, N, D) if need_saved else (0,))
    grid = (N, triton.cdiv(B, BATCH_TILE))
    if r_on_chip is None:
        r_on_chip = _r_on_chip(spec, Wx.dtype, DP, Wx.device)
    with _on_device(Wx):
        torch.library.wrap_triton(_forward_kernel)[grid](
            Wx, R, b, all_states, saved, B, T, N, D, Wx.stride(0), Wx.stride(1),
            float(forward_clipval or 0.0), CELL=spec.name, GR=spec.gates_r, GW=spec.gates_w, GB=spec.gates_b,
            S=spec.states, K=spec.saved, DP=DP, BB=BATCH_TILE, FORWARD_CLIP=forward_clipval is not None,
            NEED_SAVED=need_saved, R_ON_CHIP=r_on_chip, PRECISION=_precision(Wx.dtype, allow_tf32),
            num_warps=_num_warps(DP), num_stages=RECURRENT_STAGES)
    return all_states, saved


def backward(spec: CellSpec, grad_states, states, saved, R, recurrent_cut: bool = False, recurrent_clipval=None,
             allow_tf32: bool = False, r_on_chip: Optional[bool] = None):
    """(dg, dR, db, dstates0) of reference.backward_op: _backward_kernel, then dR and db."""
    S, T1, B, N, D = states.shape
    T = T1 - 1
    DP = _check_inputs(f"{spec.name}_triton_backward", states, R)
    grad_states, states, saved, R = (x.contiguous() for x in (grad_states, states, saved, R))
    dg = _new(states, (B, T, spec.gates_b, N, D))
    d0 = _new(states, (S, B, N, D))
    precision = _precision(states.dtype, allow_tf32)
    if r_on_chip is None:
        r_on_chip = _r_on_chip(spec, states.dtype, DP, states.device)
    with _on_device(states):
        torch.library.wrap_triton(_backward_kernel)[(N, triton.cdiv(B, BATCH_TILE))](
            grad_states, states, saved, R, dg, d0, B, T, N, D, float(recurrent_clipval or 0.0),
            CELL=spec.name, GR=spec.gates_r, GB=spec.gates_b, S=S, K=spec.saved, DP=DP, BB=BATCH_TILE,
            RECURRENT_CUT=recurrent_cut, RECURRENT_CLIP=recurrent_clipval is not None, R_ON_CHIP=r_on_chip,
            PRECISION=precision, num_warps=_num_warps(DP), num_stages=RECURRENT_STAGES)
        dR = _recurrent_weight_grad(spec, dg, states, R, DP, precision)
    db = dg.sum((0, 1), dtype=torch.float32).to(states.dtype)
    return dg, dR, db, d0


def _recurrent_weight_grad(spec: CellSpec, dg, states, R, DP: int, precision: str) -> torch.Tensor:
    """dR = sum over (t, b) of dg_R (x) h_{t-1}: fp32 partials over row chunks, summed in a fixed order."""
    B, T, _, N, D = dg.shape
    rows, GR = T * B, spec.gates_r
    BI, BT = min(DP, 64), 32
    blocks = N * GR * triton.cdiv(DP, BI)
    # enough programs to fill a large GPU (~512), each summing at least 256 rows; depends on the
    # shape only, so the summation order (and the result) is the same on every run
    parts = max(1, min(triton.cdiv(rows, 256), triton.cdiv(512, blocks)))
    chunk = triton.cdiv(triton.cdiv(rows, parts), BT) * BT
    parts = max(1, triton.cdiv(rows, chunk))
    partial = _new(dg, (parts, GR, N, D, D), torch.float32)
    torch.library.wrap_triton(_recurrent_weight_grad_kernel)[(N * GR, triton.cdiv(DP, BI), parts)](
        dg, states, partial, rows, T, N, D, chunk, GR=GR, GB=spec.gates_b, DP=DP, BI=BI, BT=BT, PRECISION=precision,
        num_warps=4)
    return partial.sum(0).to(R.dtype)


# ---- ops --------------------------------------------------------------------------------------
def op_name(function: str) -> str:
    return f"{function}_triton"


def _register(spec: CellSpec) -> None:
    name = op_name(spec.name)

    # The annotations give the schema of _ops.FORWARD_SCHEMA / BACKWARD_SCHEMA. triton_op also traces
    # these bodies (fake kernel, torch.compile), so they send CPU tensors to the reference math
    # themselves; the "cpu" kernels registered below do the same in eager mode.
    def forward_op(Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, states0: torch.Tensor,
                   need_saved: bool = True, forward_clipval: Optional[float] = None, recurrent_cut: bool = False,
                   recurrent_clipval: Optional[float] = None,
                   allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if Wx.device.type == "cpu":
            return reference.forward_op(spec, Wx, R, b, states0, need_saved, forward_clipval)
        return forward(spec, Wx, R, b, states0, need_saved, forward_clipval, allow_tf32)

    def backward_op(grad_states: torch.Tensor, states: torch.Tensor, saved: torch.Tensor, R: torch.Tensor,
                    recurrent_cut: bool = False, recurrent_clipval: Optional[float] = None,
                    allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if states.device.type == "cpu":
            return reference.backward_op(spec, grad_states, states, saved, R, recurrent_cut, recurrent_clipval)
        return backward(spec, grad_states, states, saved, R, recurrent_cut, recurrent_clipval, allow_tf32)

    backward_rule, setup_context = _ops.autograd_rule(spec, name)

    fw = torch.library.triton_op(f"flashrnn::{name}", forward_op, mutates_args=())
    bw = torch.library.triton_op(f"flashrnn::{name}_backward", backward_op, mutates_args=())
    fw.register_kernel("cpu", forward_op)
    bw.register_kernel("cpu", backward_op)
    fw.register_autograd(backward_rule, setup_context=setup_context)


if triton is not None:
    for _spec in CELLS.values():
        _register(_spec)


def available() -> bool:
    return triton is not None


def get_op(function: str):
    """torch.ops.flashrnn.<function>_triton; a RuntimeError with install hints if triton is missing."""
    if triton is None:
        raise RuntimeError(f"flashrnn: {INSTALL_HINT}")
    return getattr(torch.ops.flashrnn, op_name(function))
