"""CUDA backends against a float64 reference on the GPU (marked `gpu`; skipped without one).

Standard: relative error ||a - b|| / ||b|| of every output and every gradient (Wx, R, b, initial
states) <= 1e-4 for fp32 and <= 1e-2 for bf16/fp16. The reference is the vanilla backend in
float64 on the same (dtype-rounded) inputs. Every kernel output is NaN-poisoned before the run.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import flashrnn
from flashrnn import _core, _ops
from flashrnn._cells import CELLS

from conftest import (float64_reference, random_problem, reference_errors, rel_err, requires_grad,
                      run_with_grads, weighted_loss)

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_outputs")]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


_reference = float64_reference
_run = run_with_grads


def check_against_reference(function, backend, dtype, B, T, N, D, states="random", seed=0, options=()):
    inputs, ref, ref_grads, weights = _reference(function, B, T, N, D, dtype, states, seed, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused -> alternating fallback notes
        out, last, grads = _run(function, backend, inputs, weights, options)
    tol = TOL[dtype]
    errors = reference_errors(out, last, grads, ref, ref_grads)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{function} {backend} {dtype} B={B} T={T} N={N} D={D}: {bad} (tol {tol})"
    return errors


# (B, T, N, D): every value the issues name appears; long sequences at several head dims.
ALTERNATING_GRID = [
    (1, 7, 1, 16), (3, 1, 3, 48), (17, 7, 12, 64), (64, 7, 1, 256), (3, 7, 1, 768), (1, 7, 1, 2048),
    (17, 1024, 3, 64), (3, 1024, 1, 256), (64, 1024, 12, 16), (1, 1024, 1, 2048), (3, 7, 3, 768),
]
FUSED_GRID = [
    (1, 7, 1, 16), (3, 1, 5, 32), (16, 7, 12, 64), (17, 7, 48, 16), (256, 7, 5, 128), (3, 7, 1, 48),
    (16, 1024, 12, 64), (17, 1024, 5, 128), (256, 1024, 1, 32), (1, 1024, 48, 16), (3, 1024, 1, 48),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", ALTERNATING_GRID, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_alternating_matches_float64(shape, function, dtype):
    check_against_reference(function, "cuda", DTYPES[dtype], *shape)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", FUSED_GRID, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_fused_matches_float64(shape, function, dtype):
    D = shape[3]
    if DTYPES[dtype] == torch.float32 and D > 64:
        pytest.skip("fp32 fused head dims end at 64 (falls back to alternating, tested there)")
    check_against_reference(function, "cuda_fused", DTYPES[dtype], *shape)


OPTIONS = {
    "cut": (("gradient_recurrent_cut", True),),
    "clip": (("gradient_recurrent_clipval", 0.05),),
    "forward_clip": (("forward_clipval", 0.3),),
}


def check_option(function, backend, option, D):
    """fp32, B = 5, T = 33, 2 heads of D with one clip/cut option, against float64 (<= 1e-4)."""
    opts = OPTIONS[option]
    ref_opts = tuple((k.replace("gradient_", ""), v) for k, v in opts)
    inputs, ref, ref_grads, weights = _reference(function, 5, 33, 2, D, torch.float32, "random", 4, ref_opts)
    out, last, grads = _run(function, backend, inputs, weights, opts)
    assert rel_err(out, ref) <= 1e-4
    for name, g, r in zip(["dWx", "dR", "db", "dstates"], grads, ref_grads):
        assert rel_err(g, r) <= 1e-4, (name, rel_err(g, r))


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("backend", ["cuda", "cuda_fused"])
@pytest.mark.parametrize("function", list(CELLS))
def test_options_match_float64(function, backend, option):
    check_option(function, backend, option, 32)


@pytest.mark.parametrize("function", list(CELLS))
def test_zero_initial_states(function):
    for backend in ("cuda", "cuda_fused"):
        check_against_reference(function, backend, torch.float32, 4, 20, 3, 32, states="zeros")
        check_against_reference(function, backend, torch.bfloat16, 4, 20, 3, 32, states="none")


def check_fused_repeatable_and_agrees(function, dtype, N, D):
    """B = 19, T = 65: cuda_fused twice (bitwise equal) and cuda (equal within the dtype's tolerance)."""
    inputs, ref, _, weights = _reference(function, 19, 65, N, D, dtype, "random", 7)
    fused = _run(function, "cuda_fused", inputs, weights)
    again = _run(function, "cuda_fused", inputs, weights)
    alternating = _run(function, "cuda", inputs, weights)
    for a, b in zip([fused[0], fused[1], *fused[2]], [again[0], again[1], *again[2]]):
        assert torch.equal(a, b), "fused results differ between two runs"
    for a, b in zip([fused[0], *fused[2]], [alternating[0], *alternating[2]]):
        assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_fused_agrees_with_alternating_and_is_deterministic(function, dtype):
    check_fused_repeatable_and_agrees(function, DTYPES[dtype], 3, 64)


@pytest.mark.parametrize("backend", ["cuda", "cuda_fused"])
def test_retain_graph_gives_identical_gradients(backend):
    inputs, _, _, weights = _reference("slstm", 5, 17, 2, 32, torch.bfloat16, "random", 8)
    Wx, R, b, s0 = requires_grad(*inputs)
    states, last = flashrnn.flashrnn(Wx, R, b, s0, function="slstm", backend=backend)
    loss = weighted_loss(states, last, *weights)
    first = torch.autograd.grad(loss, [Wx, R, b, s0], retain_graph=True)
    second = torch.autograd.grad(loss, [Wx, R, b, s0])
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)


def test_layouts_and_noncontiguous_inputs():
    inputs, ref, ref_grads, weights = _reference("lstm", 6, 9, 3, 32, torch.float32, "random", 9)
    Wx, R, b, s0 = inputs
    cfg = flashrnn.FlashRNNConfig(function="lstm", backend="cuda_fused", input_shape="TBGHD",
                                  recurrent_shape="HPDG", bias_shape="HDG", output_shape="TSHBD")
    states, last = flashrnn.flashrnn(Wx.transpose(0, 1), R.permute(1, 3, 2, 0), b.permute(1, 2, 0),
                                     s0.permute(2, 0, 3, 1, 4), config=cfg)
    assert rel_err(states.permute(1, 3, 0, 2, 4), ref) <= 1e-4
    assert rel_err(last.permute(1, 3, 0, 2, 4), ref[:, :, -1:]) <= 1e-4
    # an expanded (stride-0) batch
    one = Wx[:1].expand(6, -1, -1, -1, -1)
    expected = flashrnn.flashrnn(one.contiguous(), R, b, function="lstm", backend="cuda")[0]
    for backend in ("cuda", "cuda_fused"):
        got = flashrnn.flashrnn(one, R, b, function="lstm", backend=backend)[0]
        assert rel_err(got, expected) <= 1e-5


@pytest.mark.parametrize("D", [20, 50])
def test_head_dims_that_are_not_multiples_of_16(D):
    for function in CELLS:
        for backend in ("cuda", "cuda_fused"):
            check_against_reference(function, backend, torch.float32, 3, 11, 2, D)


def test_fused_falls_back_with_a_warning_when_no_fused_family_fits():
    # One head of 2176 units needs 272 CTAs of 8 units at once: more than two per SM on any GPU we
    # target (heads and batch groups that fit one at a time run in waves, test_multi_cta.py).
    _ops._warned.clear()
    inputs, ref, _, weights = _reference("lstm", 2, 5, 1, 2176, torch.bfloat16, "random", 10)
    with pytest.warns(UserWarning, match="no fused kernel for lstm with head_dim=2176, 1 heads.*do not fit the GPU at once"):
        out = _run("lstm", "cuda_fused", inputs, weights)[0]
    assert rel_err(out, ref) <= 1e-2


@pytest.mark.parametrize("backend", ["cuda", "cuda_fused"])
def test_cuda_graph_capture_and_replay(backend):
    inputs, _, _, weights = _reference("lstm", 8, 16, 4, 64, torch.bfloat16, "random", 11)
    Wx, R, b, s0 = requires_grad(*inputs)
    static = [x.detach().clone().requires_grad_(True) for x in (Wx, R, b, s0)]

    def step():
        states, last = flashrnn.flashrnn(*static, function="lstm", backend=backend)
        loss = weighted_loss(states, last, *weights)
        return [states.detach()] + list(torch.autograd.grad(loss, static))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    fresh = random_problem("lstm", 8, 16, 4, 64, dtype=torch.bfloat16, device="cuda", seed=12)
    with torch.no_grad():
        for dst, src in zip(static, fresh):
            dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    expected = _run("lstm", backend, fresh, weights)
    for got, want in zip(outputs, [expected[0], *expected[2]]):
        assert torch.equal(got, want)


@pytest.mark.parametrize("function", list(CELLS))
def test_torch_compile_fullgraph_on_cuda(function):
    inputs, ref, ref_grads, weights = _reference(function, 4, 12, 2, 32, torch.float32, "random", 13)

    def model(Wx, R, b, s0):
        states, last = flashrnn.flashrnn(Wx, R, b, s0, function=function, backend="cuda_fused")
        return weighted_loss(states, last, *weights)

    compiled = torch.compile(model, fullgraph=True)
    Wx, R, b, s0 = requires_grad(*inputs)
    loss = compiled(Wx, R, b, s0)
    grads = torch.autograd.grad(loss, [Wx, R, b, s0])
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 1e-4


@pytest.mark.parametrize("family", ["alternating", "fused"])
@pytest.mark.parametrize("function", list(CELLS))
def test_opcheck_on_cuda(function, family):
    Wx, R, b, s0 = random_problem(function, 3, 5, 2, 16, dtype=torch.float32, device="cuda", seed=14)
    Wx, R, b, s0 = requires_grad(Wx, R, b, s0[:, :, 0])
    op = _ops.get_op(function, family)
    torch.library.opcheck(op, (Wx, R, b, s0, True, None, False, None, False))
    all_states, saved = op(Wx, R, b, s0, True, None, False, None, False)
    grad = torch.randn_like(all_states)
    bw = getattr(torch.ops.flashrnn, f"{function}_{family}_backward")
    torch.library.opcheck(bw, (grad, all_states.detach(), saved, R.detach(), False, 0.5, False))


def test_more_heads_than_the_grid_holds_are_refused():
    Wx = torch.randn(1, 1, 1, 65536, 16, device="cuda")
    R = torch.randn(1, 65536, 16, 16, device="cuda")
    b = torch.randn(1, 65536, 16, device="cuda")
    for backend in ("cuda", "cuda_fused"):
        with pytest.raises(ValueError, match="at most 65535 heads"):
            flashrnn.flashrnn(Wx, R, b, function="elman", backend=backend)


def test_cuda_error_becomes_python_exception_naming_the_kernel():
    # A launch the GPU refuses (grid y = 65536 heads > 65535), through the core directly (Python
    # refuses such shapes before any launch), after a valid launch of the same kernel; the context
    # stays usable. (A module built with g++ 13 once crashed here while formatting the message:
    # see Message in csrc/common/check.h.)
    core = _core.require_cuda_core("cuda")
    Wx = torch.randn(1, 1, 1, 65536, 16, device="cuda")
    R = torch.randn(1, 65536, 16, 16, device="cuda")
    b = torch.randn(1, 65536, 16, device="cuda")
    flashrnn.flashrnn(Wx[:, :, :, :4], R[:, :4], b[:, :4], function="elman", backend="cuda")
    B, T, N, D = 1, 1, 65536, 16
    states = torch.zeros(1, T + 1, B, N, D, device="cuda")
    saved = torch.empty(T, B, 1, N, D, device="cuda")
    elman, fp32 = CELLS["elman"].code, _ops.DTYPE_CODES[torch.float32]
    workspace = torch.empty(core.forward_workspace_floats(0, elman, fp32, B, N, D), device="cuda")
    with pytest.raises(RuntimeError, match=r"alternating_forward_kernel failed: cudaError"):
        core.forward(0, elman, fp32, 0, B, T, N, D, Wx.data_ptr(), Wx.stride(0), Wx.stride(1), R.data_ptr(),
                     b.data_ptr(), states.data_ptr(), saved.data_ptr(), workspace.data_ptr(), False, 0.0, False,
                     torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()  # the context is still usable
    flashrnn.flashrnn(Wx[:, :, :, :4], R[:, :4], b[:, :4], function="elman", backend="cuda")


def test_device_guard_uses_the_tensors_device():
    inputs, ref, _, weights = _reference("gru", 3, 6, 2, 32, torch.float32, "random", 15)
    with torch.cuda.device(0):
        out = flashrnn.flashrnn(*inputs, function="gru", backend="cuda_fused")[0]
    assert out.device == inputs[0].device
    assert rel_err(out, ref) <= 1e-4


def test_torchscript_on_cuda_matches_eager():
    inputs, ref, _, _ = _reference("lstm", 3, 9, 2, 32, torch.float32, "random", 16)
    Wx, R, b, s0 = inputs

    @torch.jit.script
    def scripted(Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
        return torch.ops.flashrnn.lstm_alternating(Wx, R, b, s0, False, None, False, None, False)[0]

    eager = torch.ops.flashrnn.lstm_alternating(Wx, R, b, s0[:, :, 0], False, None, False, None, False)[0]
    assert torch.equal(scripted(Wx, R, b, s0[:, :, 0]), eager)
    assert rel_err(eager[:, 1:].transpose(1, 2), ref) <= 1e-4


def test_gpus_below_compute_capability_8_are_refused(monkeypatch):
    inputs, _, _, _ = _reference("gru", 2, 3, 1, 16, torch.float32, "random", 17)
    monkeypatch.setattr(_ops, "_capability", lambda index: (7, 5))
    with pytest.raises(ValueError, match=r"need compute capability >= 8.0 \(Ampere\); .* has 7.5; use backend='vanilla'"):
        flashrnn.flashrnn(*inputs, function="gru", backend="cuda_fused")


def test_main_job_runs():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "flashrnn"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the CUDA core runs on it" in result.stdout and "(ok," in result.stdout
