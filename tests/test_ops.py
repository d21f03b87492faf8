"""The torch.library ops on CPU tensors (CI): opcheck of every op, torch.compile with zero graph
breaks, TorchScript, and the forward/backward buffers against the vanilla backend."""
from __future__ import annotations

import pytest
import torch

import flashrnn
from flashrnn import _ops
from flashrnn._cells import CELLS

from conftest import random_problem, rel_err, requires_grad

FAMILIES = list(_ops.FAMILIES)


def test_every_cell_and_family_has_both_ops():
    for function in CELLS:
        for family in FAMILIES:
            assert hasattr(torch.ops.flashrnn, f"{function}_{family}")
            assert hasattr(torch.ops.flashrnn, f"{function}_{family}_backward")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("function", list(CELLS))
def test_opcheck_forward_and_backward(function, family):
    Wx, R, b, s0 = random_problem(function, 3, 4, 2, 16, dtype=torch.float32, seed=1)
    Wx, R, b, s0 = requires_grad(Wx, R, b, s0[:, :, 0])
    op = _ops.get_op(function, family)
    for args in [(Wx, R, b, s0, True, None, False, None, False), (Wx, R, b, s0, True, 0.5, True, 0.1, False)]:
        torch.library.opcheck(op, args)
    all_states, saved = op(Wx, R, b, s0, True, None, False, None, False)
    backward = getattr(torch.ops.flashrnn, f"{function}_{family}_backward")
    grad = torch.randn_like(all_states)
    torch.library.opcheck(backward, (grad, all_states.detach(), saved, R.detach(), False, 0.5, False))


@pytest.mark.parametrize("function", list(CELLS))
def test_compile_fullgraph_of_flashrnn(function):
    """flashrnn.flashrnn() traces with zero graph breaks (vanilla on CPU; ops via fake kernels)."""
    Wx, R, b, s0 = random_problem(function, 2, 5, 2, 16, dtype=torch.float32, seed=2)

    def model(Wx, R, b, s0):
        states, last = flashrnn.flashrnn(Wx, R, b, s0, function=function, backend="vanilla")
        return states.sum() + last.sum()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(Wx, R, b, s0), model(Wx, R, b, s0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_fullgraph_of_the_ops_with_backward(family):
    Wx, R, b, s0 = random_problem("slstm", 2, 5, 2, 16, dtype=torch.float32, seed=3)
    s0 = s0[:, :, 0]
    op = _ops.get_op("slstm", family)

    def model(Wx, R, b, s0):
        all_states, _ = op(Wx, R, b, s0, True, 0.9, False, 0.5, False)
        return (all_states[:, 1:] * all_states[:, 1:]).sum()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    inputs = requires_grad(Wx, R, b, s0)
    eager = requires_grad(Wx, R, b, s0)
    torch.autograd.backward(compiled(*inputs))
    torch.autograd.backward(model(*eager))
    for a, e in zip(inputs, eager):
        assert rel_err(a.grad, e.grad) <= 1e-6


def test_torchscript_calls_the_ops():
    Wx, R, b, s0 = random_problem("lstm", 2, 6, 3, 16, dtype=torch.float32, seed=4)
    s0 = s0[:, :, 0]

    @torch.jit.script
    def scripted(Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        all_states, saved = torch.ops.flashrnn.lstm_alternating(Wx, R, b, s0, False, None, False, None, False)
        return all_states

    eager, _ = torch.ops.flashrnn.lstm_alternating(Wx, R, b, s0, False, None, False, None, False)
    assert torch.equal(scripted(Wx, R, b, s0), eager)
    reference = flashrnn.flashrnn(Wx, R, b, s0.unsqueeze(2), backend="vanilla")[0]
    assert rel_err(eager[:, 1:].transpose(1, 2), reference) <= 1e-6


def test_backward_without_saved_values_raises():
    Wx, R, b, s0 = requires_grad(*random_problem("gru", 2, 3, 1, 16, dtype=torch.float32, seed=5))
    all_states, saved = torch.ops.flashrnn.gru_fused(Wx, R, b, s0[:, :, 0], False, None, False, None, False)
    assert saved.numel() == 0
    with pytest.raises(RuntimeError, match="need_saved=False"):
        all_states.sum().backward()


def test_ops_are_functional_and_reentrant():
    Wx, R, b, s0 = requires_grad(*random_problem("lstm", 3, 5, 2, 16, dtype=torch.float64, seed=6))
    all_states, _ = torch.ops.flashrnn.lstm_fused(Wx, R, b, s0[:, :, 0], True, None, False, None, False)
    loss = (all_states ** 2).sum()
    first = torch.autograd.grad(loss, [Wx, R, b, s0], retain_graph=True)
    second = torch.autograd.grad(loss, [Wx, R, b, s0])
    for a, c in zip(first, second):
        assert torch.equal(a, c)
