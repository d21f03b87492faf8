"""Shared helpers. GPU tests are marked `gpu` and skip cleanly without a usable GPU and core."""
from __future__ import annotations

import functools

import pytest
import torch

import flashrnn
from flashrnn._cells import CELLS


def gpu_available() -> bool:
    return (torch.cuda.is_available() and flashrnn.has_cuda_core()
            and torch.cuda.get_device_capability()[0] >= 8)


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with compute capability >= 8.0 and the CUDA core")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison_outputs():
    """The CUDA ops fill every output with NaN before their kernels run, so an element a kernel
    fails to write cannot pass unnoticed (the GPU suites use it for every test)."""
    from flashrnn import _ops

    _ops.POISON_OUTPUTS = True
    yield
    _ops.POISON_OUTPUTS = False


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere counts as an infinite error."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)


def random_problem(function: str, B: int, T: int, N: int, D: int, dtype=torch.float64, device="cpu",
                   states: str = "random", seed: int = 0, scale_r: float = 1.0):
    """Wx, R, b and initial states [S, B, 1, N, D] (or None) with the original's test statistics:
    Wx ~ N(0, 1), R ~ N(0, 1) / sqrt(D), b ~ N(0, 1). sLSTM states are valid ones (n >= 1)."""
    spec = CELLS[function]
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    Wx = randn(B, T, spec.gates_w, N, D)
    R = randn(spec.gates_r, N, D, D) * scale_r / D ** 0.5
    b = randn(spec.gates_b, N, D)
    s0 = None
    if states == "random":
        s0 = randn(spec.states, B, 1, N, D) * 0.5
        if function == "slstm":
            s0[2] = 1 + s0[2].abs()  # n >= 1: a state a real sequence can reach
    elif states == "zeros":
        s0 = torch.zeros(spec.states, B, 1, N, D, dtype=torch.float64)
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype)  # noqa: E731
    return cast(Wx), cast(R), cast(b), cast(s0)


def requires_grad(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def loss_weights(states_shape, seed: int = 1, device="cpu"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(states_shape, generator=g, dtype=torch.float64)
    w_last = torch.randn(states_shape[:2] + (1,) + states_shape[3:], generator=g, dtype=torch.float64)
    return w.to(device), w_last.to(device)


def weighted_loss(states, last_states, w, w_last):
    """A loss that sends a gradient into every output element (all states, all steps, last)."""
    return (states.double() * w).sum() + (last_states.double() * w_last).sum()


# ---- float64 reference for the GPU backends (test_gpu.py, test_triton.py) ----------------------
@functools.lru_cache(maxsize=4)  # GPU float64 references of T = 1024 cases take GBs
def float64_reference(function, B, T, N, D, dtype, states="random", seed=0, options=(), device="cuda"):
    """(inputs in dtype, float64 states, float64 gradients, loss weights) for one problem, cached.

    The reference is the vanilla backend in float64 on the same dtype-rounded inputs; options are
    vanilla_forward's (forward_clipval, recurrent_cut, recurrent_clipval) as (name, value) pairs."""
    from flashrnn import reference

    opts = dict(options)
    Wx, R, b, s0 = random_problem(function, B, T, N, D, dtype=dtype, device=device, states=states, seed=seed)
    zeros = torch.zeros(CELLS[function].states, B, 1, N, D, dtype=dtype, device=device)
    Wx64, R64, b64, s64 = requires_grad(*(x.double() for x in (Wx, R, b, zeros if s0 is None else s0)))
    ref = reference.vanilla_forward(Wx64, R64, b64, s64[:, :, 0], function, opts.get("forward_clipval"),
                                    opts.get("recurrent_cut", False), opts.get("recurrent_clipval"))
    w, w_last = loss_weights(ref.shape, device=device)
    if function == "slstm":
        w[3], w_last[3] = 0, 0  # m is a stabilizer; its output gradient is dropped by design
    grads = torch.autograd.grad(weighted_loss(ref, ref[:, :, -1:], w, w_last), [Wx64, R64, b64, s64],
                                allow_unused=True, materialize_grads=True)
    return (Wx, R, b, s0), ref.detach(), [g.detach() for g in grads], (w, w_last)


def run_with_grads(function, backend, inputs, weights, options=(), **kwargs):
    """(states, last_states, [dWx, dR, db, dstates]) of flashrnn.flashrnn with FlashRNNConfig
    options; dstates is None without initial states."""
    Wx, R, b, s0 = requires_grad(*inputs)
    cfg = flashrnn.FlashRNNConfig(function=function, backend=backend, **dict(options), **kwargs)
    states, last = flashrnn.flashrnn(Wx, R, b, s0, config=cfg)
    loss = weighted_loss(states, last, *weights)
    leaves = [x for x in (Wx, R, b, s0) if x is not None]
    grads = list(torch.autograd.grad(loss, leaves)) + ([None] if s0 is None else [])
    return states, last, grads


def reference_errors(out, last, grads, ref, ref_grads) -> dict[str, float]:
    """Relative error of every output and every gradient that exists."""
    errors = {"states": rel_err(out, ref), "last_states": rel_err(last, ref[:, :, -1:])}
    for name, g, r in zip(["dWx", "dR", "db", "dstates"], grads, ref_grads):
        if g is not None:
            errors[name] = rel_err(g, r)
    return errors
