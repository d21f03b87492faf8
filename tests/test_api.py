"""flashrnn.flashrnn() and FlashRNNConfig on CPU (vanilla backend): layouts, states, options."""
from __future__ import annotations

import pytest
import torch

import flashrnn
from flashrnn._cells import CELLS

from conftest import random_problem, rel_err


@pytest.mark.parametrize("function", list(CELLS))
def test_returns_shapes_of_the_original(function):
    spec = CELLS[function]
    Wx, R, b, _ = random_problem(function, 3, 7, 2, 16, dtype=torch.float64)
    states, last = flashrnn.flashrnn(Wx, R, b, function=function, backend="vanilla")
    assert states.shape == (spec.states, 3, 7, 2, 16)
    assert last.shape == (spec.states, 3, 1, 2, 16)
    assert torch.equal(last, states[:, :, -1:])


def test_chunks_chain_through_last_states():
    Wx, R, b, s0 = random_problem("slstm", 2, 10, 2, 16, dtype=torch.float64, states="zeros")
    whole, _ = flashrnn.flashrnn(Wx, R, b, function="slstm", backend="vanilla")
    first, last = flashrnn.flashrnn(Wx[:, :4], R, b, function="slstm", backend="vanilla")
    second, _ = flashrnn.flashrnn(Wx[:, 4:], R, b, last, function="slstm", backend="vanilla")
    assert rel_err(torch.cat([first, second], dim=2), whole) <= 1e-12


def test_layout_strings_are_applied():
    Wx, R, b, s0 = random_problem("lstm", 3, 5, 2, 16, dtype=torch.float64)
    ref, ref_last = flashrnn.flashrnn(Wx, R, b, s0, backend="vanilla")
    cfg = flashrnn.FlashRNNConfig(backend="vanilla", input_shape="TBGHD", output_shape="TBSHD",
                                  recurrent_shape="HPDG", bias_shape="HDG")
    states, last = flashrnn.flashrnn(Wx.transpose(0, 1), R.permute(1, 3, 2, 0), b.permute(1, 2, 0),
                                     s0.permute(2, 1, 0, 3, 4), config=cfg)
    assert torch.equal(states.permute(2, 1, 0, 3, 4), ref)
    assert torch.equal(last.permute(2, 1, 0, 3, 4), ref_last)


def test_config_overrides_arguments_and_initial_val():
    Wx, R, b, _ = random_problem("lstm", 2, 3, 1, 16, dtype=torch.float64)
    cfg = flashrnn.FlashRNNConfig(function="lstm", backend="vanilla", initial_val=[0.5, -0.25])
    states, _ = flashrnn.flashrnn(Wx, R, b, function="gru", backend="cuda_fused", config=cfg)
    s0 = torch.stack([torch.full((2, 1, 1, 16), 0.5), torch.full((2, 1, 1, 16), -0.25)]).double()
    expected, _ = flashrnn.flashrnn(Wx, R, b, s0, backend="vanilla")
    assert torch.equal(states, expected)
    assert cfg.num_states == 2 and cfg.num_gates_r == 4 and cfg.simple_agg


def test_forward_clipval_alone_clips_and_gradient_clip_alone_does_not():
    Wx, R, b, _ = random_problem("elman", 2, 6, 1, 16, dtype=torch.float64)
    clipped, _ = flashrnn.flashrnn(Wx, R, b, config=flashrnn.FlashRNNConfig(function="elman", backend="vanilla",
                                                                          forward_clipval=0.2))
    assert clipped.abs().max() <= 0.2
    free, _ = flashrnn.flashrnn(Wx, R, b, config=flashrnn.FlashRNNConfig(
        function="elman", backend="vanilla", gradient_recurrent_clipval=0.2))
    plain, _ = flashrnn.flashrnn(Wx, R, b, function="elman", backend="vanilla")
    assert torch.equal(free, plain) and free.abs().max() > 0.2  # the original's coupling is fixed


def test_autocast_casts_inputs():
    Wx, R, b, _ = random_problem("lstm", 2, 3, 1, 16, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        states, _ = flashrnn.flashrnn(Wx, R, b, backend="vanilla")
        mixed, _ = flashrnn.flashrnn(Wx.bfloat16(), R, b, backend="vanilla")  # a Linear's output, fp32 weights
    assert states.dtype == mixed.dtype == torch.bfloat16
    assert torch.equal(states, mixed)


def test_build_info_and_version():
    info = flashrnn.build_info()
    assert flashrnn.__version__.count(".") == 2
    assert "with_cuda" in info and "cuda_archs" in info
    if info["with_cuda"]:
        assert info["version"] == flashrnn.__version__
        assert "bfloat16" in info["fused_head_dims"]


def test_core_cell_table_matches_python():
    if not flashrnn.has_cuda_core():
        pytest.skip("the core was built without CUDA")
    from flashrnn import _core
    for spec in CELLS.values():
        info = _core._C.cell_info(spec.code)
        assert (info["name"], info["gates_r"], info["gates_w"], info["gates_b"], info["states"], info["saved"]) == \
            (spec.name, spec.gates_r, spec.gates_w, spec.gates_b, spec.states, spec.saved)
