"""The vanilla backend against torch.nn (fp64), and the hand-written backward rule (the one the
CUDA kernels implement, run here by the ops' CPU kernels) against autograd of the vanilla cells."""
from __future__ import annotations

import pytest
import torch

import flashrnn
from flashrnn import reference
from flashrnn._cells import CELLS

from conftest import loss_weights, random_problem, rel_err, requires_grad, weighted_loss

TOL = 1e-10


def _module(kind: str, H: int):
    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[kind]
    m = cls(input_size=7, hidden_size=H, batch_first=True).double()
    with torch.no_grad():  # non-trivial biases
        m.bias_ih_l0.normal_()
        m.bias_hh_l0.normal_()
    return m


def _as_flashrnn(kind: str, m, x):
    """(Wx, R, b) from torch.nn weights, spec section 2; differentiable in the module's params."""
    H = m.hidden_size
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    B, T, _ = x.shape
    if kind == "gru":  # torch rows (r, z, n); ours R (g=n, r, z), b (g, r, z, n), Wx (r, z, n)
        r, z, n = (slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H))
        R = torch.stack([w_hh[n], w_hh[r], w_hh[z]]).unsqueeze(1)
        b = torch.stack([b_hh[n], b_ih[r] + b_hh[r], b_ih[z] + b_hh[z], b_ih[n]]).unsqueeze(1)
        Wx = (x @ w_ih.T).view(B, T, 3, 1, H)
    else:
        G = 4 if kind == "lstm" else 1
        R = w_hh.view(G, 1, H, H)
        b = (b_ih + b_hh).view(G, 1, H)
        Wx = (x @ w_ih.T).view(B, T, G, 1, H)
    return Wx, R, b


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
def test_vanilla_matches_torch_nn(kind):
    B, T, H = 3, 9, 12
    m = _module(kind, H)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, 7, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(1, B, H, generator=g, dtype=torch.float64, requires_grad=True)
    w_out = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    w_c = torch.randn(1, B, H, generator=g, dtype=torch.float64)

    def torch_loss():
        if kind == "lstm":
            out, (hn, cn) = m(x, (h0, c0))
            return (out * w_out).sum() + (cn * w_c).sum()
        out, hn = m(x, h0)
        return (out * w_out).sum() + (hn * w_c).sum()

    def our_loss():
        Wx, R, b = _as_flashrnn(kind, m, x)
        s0 = torch.stack([h0, c0]) if kind == "lstm" else h0.unsqueeze(0)
        s0 = s0.view(len(s0), B, 1, 1, H)  # [S, 1, B, H] -> [S, B, 1, N = 1, D = H]
        states, last = flashrnn.flashrnn(Wx, R, b, s0, function=kind, backend="vanilla")
        out = states[0, :, :, 0]
        last_extra = last[1, :, 0, 0] if kind == "lstm" else last[0, :, 0, 0]
        return (out * w_out).sum() + (last_extra.unsqueeze(0) * w_c).sum()

    params = [x, h0, c0] + list(m.parameters())
    ref = torch_loss()
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    ours = our_loss()
    our_grads = torch.autograd.grad(ours, params, allow_unused=True)
    assert abs(ours.item() - ref.item()) <= TOL * abs(ref.item())
    for p, a, r in zip(["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"], our_grads, ref_grads):
        if r is None:
            assert a is None or a.abs().max() == 0, p
            continue
        assert rel_err(a, r) <= TOL, p


OPTIONS = {
    "plain": {},
    "cut": {"recurrent_cut": True},
    "clip": {"recurrent_clipval": 0.05},
    "forward_clip": {"forward_clipval": 0.3},
    "all": {"recurrent_cut": True, "recurrent_clipval": 0.05, "forward_clipval": 0.3},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("states", ["random", "zeros"])
@pytest.mark.parametrize("function", list(CELLS))
def test_kernel_rule_matches_autograd(function, states, option):
    """CPU op (forward + hand-written backward) == autograd through the vanilla cells, fp64."""
    opts = OPTIONS[option]
    Wx, R, b, s0 = random_problem(function, B=3, T=6, N=2, D=5, states=states, seed=3)
    spec = CELLS[function]

    Wx1, R1, b1, s1 = requires_grad(Wx, R, b, s0[:, :, 0])
    ref = reference.vanilla_forward(Wx1, R1, b1, s1, function, opts.get("forward_clipval"),
                                    opts.get("recurrent_cut", False), opts.get("recurrent_clipval"))
    Wx2, R2, b2, s2 = requires_grad(Wx, R, b, s0[:, :, 0])
    all_states, _ = torch.ops.flashrnn.__getattr__(f"{function}_alternating")(
        Wx2, R2, b2, s2, True, opts.get("forward_clipval"), opts.get("recurrent_cut", False),
        opts.get("recurrent_clipval"), False)
    ours = all_states[:, 1:].transpose(1, 2)
    assert rel_err(ours, ref) <= TOL

    w, w_last = loss_weights(ref.shape)
    if function == "slstm":  # m is a stabilizer: its output gradient is dropped by design
        w[3], w_last[3] = 0, 0
    g_ref = torch.autograd.grad(weighted_loss(ref, ref[:, :, -1:], w, w_last), [Wx1, R1, b1, s1],
                                allow_unused=True, materialize_grads=True)
    g_ours = torch.autograd.grad(weighted_loss(ours, ours[:, :, -1:], w, w_last), [Wx2, R2, b2, s2])
    for name, a, r in zip(["dWx", "dR", "db", "dstates"], g_ours, g_ref):
        if r.abs().max() == 0:  # e.g. Elman with the cut: h_0 reaches nothing
            assert a.abs().max() == 0, name
            continue
        assert rel_err(a, r) <= TOL, (name, rel_err(a, r))
    assert spec.states == ours.shape[0]


def test_slstm_first_step_rule_is_per_element():
    """n_{t-1} == 0 selects m_t = i~ element by element (spec 2.3), also with mixed states."""
    Wx, R, b, s0 = random_problem("slstm", B=2, T=1, N=1, D=4, states="random", seed=5)
    s0[2, 0, 0, 0, :2] = 0  # first two units of batch 0 take the first-step branch
    states, _ = flashrnn.flashrnn(Wx, R, b, s0, function="slstm", backend="vanilla")
    i_tilde = Wx[:, 0, 0] + torch.einsum("bnj,nij->bni", s0[0, :, 0], R[0]) + b[0]
    m = states[3, :, 0]
    assert torch.equal(m[0, 0, :2], i_tilde[0, 0, :2])
    lf = torch.nn.functional.logsigmoid(Wx[:, 0, 1] + torch.einsum("bnj,nij->bni", s0[0, :, 0], R[1]) + b[1])
    expected = torch.maximum(i_tilde, lf + s0[3, :, 0])
    assert torch.allclose(m[0, 0, 2:], expected[0, 0, 2:], rtol=0, atol=1e-15)
    assert torch.allclose(m[1], expected[1], rtol=0, atol=1e-15)
    assert m[0, 0, 0] != expected[0, 0, 0] or m[0, 0, 1] != expected[0, 0, 1]
