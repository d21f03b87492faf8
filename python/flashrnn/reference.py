"""Pure-PyTorch cells: the vanilla backend, the CPU kernels of the ops and the test oracle.

Written for clarity, not speed. Every cell has
  forward(rh, wx, b, s)        -> (new states, saved values)      (lists of [B, N, D] tensors)
  backward(saved, s_prev, s, ds) -> (ds_prev, dg)
with the same math, gate order and saved values as csrc/kernels/cells/*.cuh. `forward` is
differentiable (the vanilla backend runs it under autograd); `backward` is the hand-written rule
the CUDA kernels implement, checked against autograd in tests/test_reference.py.

Shapes: Wx [B, T, Gw, N, D], R [Gr, N, D, D] (R[g, n, i, j]: output i, input j), b [Gb, N, D],
states [S, B, N, D]; all_states [S, T + 1, B, N, D] with the initial state at index 0;
saved [T, B, K, N, D]; dg [B, T, Gb, N, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._cells import CellSpec

Tensors = list[torch.Tensor]


# ---- cells ------------------------------------------------------------------------------------
def _elman_forward(rh, wx, b, s):
    h = torch.tanh(rh[0] + wx[0] + b[0])
    return [h], [h]


def _elman_backward(saved, s_prev, s, ds):
    h = saved[0]
    return [torch.zeros_like(ds[0])], [ds[0] * (1 - h * h)]


def _lstm_forward(rh, wx, b, s):
    i = torch.sigmoid(rh[0] + wx[0] + b[0])
    f = torch.sigmoid(rh[1] + wx[1] + b[1])
    z = torch.tanh(rh[2] + wx[2] + b[2])
    o = torch.sigmoid(rh[3] + wx[3] + b[3])
    c = f * s[1] + i * z
    return [o * torch.tanh(c), c], [i, f, z, o]


def _lstm_backward(saved, s_prev, s, ds):
    i, f, z, o = saved
    tc = torch.tanh(s[1])
    dc = ds[1] + ds[0] * o * (1 - tc * tc)
    dg = [dc * z * i * (1 - i), dc * s_prev[1] * f * (1 - f), dc * i * (1 - z * z), ds[0] * tc * o * (1 - o)]
    return [torch.zeros_like(dc), dc * f], dg


def _gru_forward(rh, wx, b, s):
    g = rh[0] + b[0]
    r = torch.sigmoid(wx[0] + rh[1] + b[1])
    z = torch.sigmoid(wx[1] + rh[2] + b[2])
    n = torch.tanh(wx[2] + b[3] + r * g)
    return [z * s[0] + (1 - z) * n], [g, r, z, n]


def _gru_backward(saved, s_prev, s, ds):
    g, r, z, n = saved
    dh = ds[0]
    da = dh * (1 - z) * (1 - n * n)
    dg = [da * r, da * g * r * (1 - r), dh * (s_prev[0] - n) * z * (1 - z), da]
    return [dh * z], dg


def _slstm_forward(rh, wx, b, s):
    # m is a stabilizer: computed without gradient (stop-gradient), see cells/slstm.cuh.
    it = rh[0] + wx[0] + b[0]
    ft = rh[1] + wx[1] + b[1]
    lf = F.logsigmoid(ft)
    c_prev, n_prev, m_prev = s[1], s[2], s[3].detach()
    m = torch.where(n_prev == 0, it, torch.maximum(it, lf + m_prev)).detach()
    i = torch.exp(it - m)
    f = torch.exp(lf + m_prev - m)
    z = torch.tanh(rh[2] + wx[2] + b[2])
    o = torch.sigmoid(rh[3] + wx[3] + b[3])
    c = f * c_prev + i * z
    u = f * n_prev + i
    n = torch.where(u >= 1, u, 1 + (u - u.detach()))  # max(u, 1); gradient passes straight through
    return [o * c / n, c, n, m], [i, f, z, o, torch.sigmoid(-ft)]


def _slstm_backward(saved, s_prev, s, ds):
    i, f, z, o, dlf = saved
    c, n = s[1], s[2]
    dh = ds[0]
    dc = ds[1] + dh * o / n
    dn = ds[2] - dh * o * c / (n * n)
    dg = [(dc * z + dn) * i, (dc * s_prev[1] + dn * s_prev[2]) * f * dlf, dc * i * (1 - z * z),
          dh * c / n * o * (1 - o)]
    zero = torch.zeros_like(dh)
    return [zero, dc * f, dn * f, zero], dg


CELL_FUNCTIONS = {
    "elman": (_elman_forward, _elman_backward),
    "lstm": (_lstm_forward, _lstm_backward),
    "gru": (_gru_forward, _gru_backward),
    "slstm": (_slstm_forward, _slstm_backward),
}


# ---- helpers ----------------------------------------------------------------------------------
class _ClipGrad(torch.autograd.Function):
    """Identity forward; clamps the gradient to [-c, c] (spec 3.4)."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.c = c
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-ctx.c, ctx.c), None


def _recurrent_product(h: torch.Tensor, R: torch.Tensor) -> Tensors:
    """[R_g h] for every recurrent gate g: h [B, N, D], R [Gr, N, D, D] -> Gr x [B, N, D]."""
    return list(torch.einsum("bnj,gnij->gbni", h, R).unbind(0))


def _transposed_product(dg: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """sum_g R_g^T dg_g: dg [B, Gr, N, D], R [Gr, N, D, D] -> [B, N, D]."""
    return torch.einsum("bgni,gnij->bnj", dg, R)


def _clamp(x: torch.Tensor, c: float | None) -> torch.Tensor:
    return x if c is None else x.clamp(-c, c)


# ---- the vanilla backend ----------------------------------------------------------------------
def vanilla_forward(Wx, R, b, states0, function: str, forward_clipval=None, recurrent_cut=False,
                    recurrent_clipval=None) -> torch.Tensor:
    """Loop over T under autograd, in the dtype of the inputs. Returns states [S, B, T, N, D].

    gradient_recurrent_cut drops the R^T path of dh_{t-1}; gradient_recurrent_clipval clamps
    the gradient carried into h_{t-1} from step t; forward_clipval clamps h after each step
    (its gradient passes straight through). Each option works on its own (spec 3.3-3.5).
    """
    cell_forward, _ = CELL_FUNCTIONS[function]
    s = list(states0.unbind(0))
    bias = list(b.unbind(0))
    outputs = []
    for t in range(Wx.shape[1]):
        h_rec = s[0] if recurrent_clipval is None else _ClipGrad.apply(s[0], float(recurrent_clipval))
        rh = _recurrent_product(h_rec.detach() if recurrent_cut else h_rec, R)
        s, _ = cell_forward(rh, list(Wx[:, t].unbind(1)), bias, [h_rec] + s[1:])
        if forward_clipval is not None:
            h = s[0]  # clamped value, straight-through gradient (h - h.detach() is exactly 0)
            s[0] = h.clamp(-forward_clipval, forward_clipval).detach() + (h - h.detach())
        outputs.append(torch.stack(s))
    return torch.stack(outputs, dim=2)


# ---- the ops' CPU kernels (mirror the CUDA kernels' buffers and numerics) ----------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def forward_op(spec: CellSpec, Wx, R, b, states0, need_saved: bool, forward_clipval):
    """all_states [S, T+1, B, N, D] and saved [T, B, K, N, D] (empty unless need_saved).

    States are carried in fp32 (fp64 for fp64 inputs); h is rounded to the input dtype before
    the recurrent product, as the tensor-core kernels do.
    """
    cell_forward, _ = CELL_FUNCTIONS[spec.name]
    B, T, _, N, D = Wx.shape
    dtype, cdt = Wx.dtype, _compute_dtype(Wx.dtype)
    all_states = Wx.new_empty((spec.states, T + 1, B, N, D))
    all_states[:, 0] = states0
    saved = Wx.new_empty((T, B, spec.saved, N, D) if need_saved else (0,))
    s = list(states0.to(cdt).unbind(0))
    Rc, bias = R.to(cdt), list(b.to(cdt).unbind(0))
    for t in range(T):
        rh = _recurrent_product(s[0].to(dtype).to(cdt), Rc)
        s, sv = cell_forward(rh, list(Wx[:, t].to(cdt).unbind(1)), bias, s)
        s[0] = _clamp(s[0], forward_clipval)
        all_states[:, t + 1] = torch.stack(s)
        if need_saved:
            saved[t] = torch.stack(sv, dim=1)
    return all_states, saved


@torch.no_grad()
def backward_op(spec: CellSpec, grad_states, all_states, saved, R, recurrent_cut: bool, recurrent_clipval):
    """dg [B, T, Gb, N, D], dR, db, dstates0 [S, B, N, D]: the CUDA backward's rule."""
    _, cell_backward = CELL_FUNCTIONS[spec.name]
    S, T1, B, N, D = all_states.shape
    T, dtype, cdt = T1 - 1, all_states.dtype, _compute_dtype(all_states.dtype)
    Rc = R.to(cdt)
    grad = grad_states.to(cdt)
    dg_all = all_states.new_empty((B, T, spec.gates_b, N, D))
    ds = [torch.zeros((B, N, D), dtype=cdt, device=all_states.device) for _ in range(S)]

    def carried(t):  # clip(R^T dg_{t+1} + pointwise term) for h_t
        rec = ds[0]
        if t < T and not recurrent_cut:
            rec = rec + _transposed_product(dg_all[:, t, : spec.gates_r].to(cdt), Rc)
        return _clamp(rec, recurrent_clipval)

    for t in range(T, 0, -1):
        dsv = [carried(t) + grad[0, t]] + [ds[k] + grad[k, t] for k in range(1, S)]
        s_prev = list(all_states[:, t - 1].to(cdt).unbind(0))
        s_cur = list(all_states[:, t].to(cdt).unbind(0))
        ds, dg = cell_backward(list(saved[t - 1].to(cdt).unbind(1)), s_prev, s_cur, dsv)
        dg_all[:, t - 1] = torch.stack(dg, dim=1)
    d0 = [carried(0) + grad[0, 0]] + [ds[k] + grad[k, 0] for k in range(1, S)]
    dgc = dg_all.to(cdt)
    dR = torch.einsum("btgni,tbnj->gnij", dgc[:, :, : spec.gates_r], all_states[0, :T].to(cdt))
    db = dgc.sum((0, 1))
    return dg_all, dR.to(dtype).contiguous(), db.to(dtype), torch.stack(d0).to(dtype)

