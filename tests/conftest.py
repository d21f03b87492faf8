"""Shared helpers. GPU tests are marked `gpu` and skip cleanly without a usable GPU and core."""
from __future__ import annotations

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
