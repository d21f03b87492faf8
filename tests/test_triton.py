"""The Triton backend (backend="triton", python/flashrnn/triton_backend.py).

GPU tests (marked `gpu`; skipped without a GPU, the CUDA core or triton) hold the kernels to the
standard of test_gpu.py: the relative error of every output and every gradient (Wx, R, b, initial
states) against the vanilla backend in float64 is <= 1e-4 for fp32 and <= 1e-2 for bf16/fp16, with
NaN-poisoned outputs. Every compiled variant (cell, dtype, head-dim bucket, options) costs about a
second of Triton compile on first use, so the default grid covers each cell x dtype, each head-dim
bucket, B in {1, 3, 16, 17} and T in {1, 7, 1024} without the full product; the product is `slow`.

CPU tests need no GPU: the error without triton, the head-dim buckets, the ops' CPU kernels (the
reference math) and, with TRITON_INTERPRET=1, the kernels themselves in Triton's interpreter against
reference.forward_op/backward_op, and that none of their loads or stores leaves its tensor:
    TRITON_INTERPRET=1 PYTHONPATH=python python -m pytest -q tests/test_triton.py -k interpreter
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings

import pytest
import torch

import flashrnn
from flashrnn import _ops, _validate, reference, triton_backend
from flashrnn._cells import CELLS

from conftest import (float64_reference, random_problem, reference_errors, rel_err, requires_grad,
                      run_with_grads, weighted_loss)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

needs_triton = pytest.mark.skipif(not triton_backend.available(), reason="triton is not installed")


def on_gpu(test):
    """`gpu` marker (conftest skips it without a usable GPU) and a skip without triton. Not a module-level
    pytestmark: the CPU tests below must run in CPU-only CI."""
    return pytest.mark.gpu(needs_triton(test))


@pytest.fixture(autouse=True)
def poison_outputs():
    triton_backend.POISON_OUTPUTS = True
    yield
    triton_backend.POISON_OUTPUTS = False


# ---- float64 reference (shared with test_gpu.py, in conftest.py) -------------------------------
_reference = float64_reference


def _run(function, inputs, weights, options=(), backend="triton", **kwargs):
    return run_with_grads(function, backend, inputs, weights, options, **kwargs)


def _check(function, dtype, B, T, N, D, states="random", seed=0, options=()):
    """Run backend="triton" (options in FlashRNNConfig names) and compare with the float64 reference."""
    ref_options = tuple((k.replace("gradient_", ""), v) for k, v in options)
    inputs, ref, ref_grads, weights = _reference(function, B, T, N, D, dtype, states, seed, ref_options)
    out, last, grads = _run(function, inputs, weights, options)
    errors = reference_errors(out, last, grads, ref, ref_grads)
    tol = TOL[dtype]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"triton {function} {dtype} B={B} T={T} N={N} D={D} {dict(options)}: {bad} (tol {tol})"
    return errors


# ---- GPU: against float64 ---------------------------------------------------------------------
# (function, dtype, B, T, N, D): every cell x dtype, every head-dim bucket per dtype, all B and T.
CASES = [
    ("lstm", "bfloat16", 17, 7, 2, 128),
    ("lstm", "float16", 1, 7, 1, 16),
    ("lstm", "float32", 16, 1024, 3, 64),
    ("lstm", "bfloat16", 5, 9, 2, 48),      # the 64 bucket with a masked tail
    ("slstm", "bfloat16", 16, 1024, 2, 64),
    ("slstm", "float16", 3, 7, 2, 128),
    ("slstm", "float32", 1, 1, 1, 16),
    ("slstm", "float32", 3, 11, 2, 20),     # padded to 32 by api.py
    ("gru", "bfloat16", 3, 1024, 1, 128),
    ("gru", "float16", 17, 7, 2, 64),
    ("gru", "float32", 3, 7, 2, 32),
    ("elman", "bfloat16", 16, 7, 4, 16),
    ("elman", "float16", 17, 1024, 1, 32),
    ("elman", "float32", 1, 7, 1, 128),
]
FULL_GRID = [(1, 7, 1, 16), (3, 1, 2, 32), (16, 7, 3, 64), (17, 7, 2, 128), (17, 1024, 2, 64), (3, 1024, 1, 128)]


@on_gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}-{}-B{}-T{}-N{}-D{}".format(*c))
def test_matches_float64(case):
    function, dtype, B, T, N, D = case
    _check(function, DTYPES[dtype], B, T, N, D)


@on_gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", FULL_GRID, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_matches_float64_full_grid(shape, function, dtype):
    _check(function, DTYPES[dtype], *shape)


OPTIONS = {
    "cut": (("gradient_recurrent_cut", True),),
    "clip": (("gradient_recurrent_clipval", 0.05),),
    "forward_clip": (("forward_clipval", 0.3),),
}


# lstm and gru (GRU's pointwise term meets the clip and the cut) by default, the others in `slow`
@on_gpu
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("function", ["lstm", "gru", pytest.param("elman", marks=pytest.mark.slow),
                                      pytest.param("slstm", marks=pytest.mark.slow)])
def test_options_match_float64(function, option):
    _check(function, torch.float32, 5, 33, 2, 32, seed=4, options=OPTIONS[option])


@on_gpu
@pytest.mark.parametrize("function, dtype, D, states", [
    ("slstm", "float32", 32, "zeros"), ("slstm", "bfloat16", 64, "none"),
    ("gru", "float32", 32, "zeros"), ("lstm", "bfloat16", 128, "none")])
def test_zero_and_missing_initial_states(function, dtype, D, states):
    _check(function, DTYPES[dtype], 4, 20, 3, D, states=states)


@on_gpu
@pytest.mark.parametrize("function, dtype, D", [("lstm", "bfloat16", 64), ("gru", "float32", 32),
                                                ("slstm", "float32", 32)])
def test_deterministic_and_agrees_with_cuda(function, dtype, D):
    inputs, _, _, weights = _reference(function, 19, 65, 3, D, DTYPES[dtype], "random", 7)
    first = _run(function, inputs, weights)
    again = _run(function, inputs, weights)
    for a, b in zip([first[0], first[1], *first[2]], [again[0], again[1], *again[2]]):
        assert torch.equal(a, b), "triton results differ between two runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fused -> alternating fallback notes
        cuda = _run(function, inputs, weights, backend="cuda_fused")
    for a, b in zip([first[0], *first[2]], [cuda[0], *cuda[2]]):
        assert rel_err(a, b) <= TOL[DTYPES[dtype]]


@on_gpu
@pytest.mark.parametrize("function", ["lstm", "slstm", "gru"])
def test_buffers_interchange_with_the_cuda_ops(function):
    """The Triton backward reads the CUDA forward's buffers (and vice versa) and agrees with it."""
    Wx, R, b, s0 = random_problem(function, 5, 9, 2, 32, dtype=torch.float32, device="cuda", seed=3)
    args = (Wx, R, b, s0[:, :, 0], True, None, False, None, False)
    triton_fw, cuda_fw = triton_backend.get_op(function), _ops.get_op(function, "alternating")
    triton_bw = getattr(torch.ops.flashrnn, f"{function}_triton_backward")
    cuda_bw = getattr(torch.ops.flashrnn, f"{function}_alternating_backward")
    (st_t, sv_t), (st_c, sv_c) = triton_fw(*args), cuda_fw(*args)
    assert rel_err(st_t, st_c) <= 1e-5 and rel_err(sv_t, sv_c) <= 1e-5
    grad = torch.randn_like(st_c)
    grad[:, 0] = 0
    if function == "slstm":
        grad[3] = 0
    for states, saved in ((st_c, sv_c), (st_t, sv_t)):
        ours = triton_bw(grad, states, saved, R, False, 0.5, False)
        theirs = cuda_bw(grad, states, saved, R, False, 0.5, False)
        for name, a, r in zip(["dg", "dR", "db", "dstates0"], ours, theirs):
            assert rel_err(a, r) <= 1e-5, (name, rel_err(a, r))


@on_gpu
def test_streamed_r_matches_r_on_chip():
    """The variant for heads whose R does not fit in shared memory (fp32 at D=128 on an H100)."""
    spec = CELLS["lstm"]
    Wx, R, b, s0 = random_problem("lstm", 17, 9, 2, 32, dtype=torch.float32, device="cuda", seed=5)
    on_chip = triton_backend.forward(spec, Wx, R, b, s0[:, :, 0], True, 0.3, r_on_chip=True)
    streamed = triton_backend.forward(spec, Wx, R, b, s0[:, :, 0], True, 0.3, r_on_chip=False)
    assert all(torch.equal(a, b_) for a, b_ in zip(on_chip, streamed))
    grad = torch.randn_like(on_chip[0])
    bw = [triton_backend.backward(spec, grad, *on_chip, R, False, 0.05, r_on_chip=chip) for chip in (True, False)]
    assert all(torch.equal(a, b_) for a, b_ in zip(*bw))


@on_gpu
@pytest.mark.slow
def test_fp32_head_dim_128_streams_r():
    _check("lstm", torch.float32, 3, 7, 2, 128)


@on_gpu
def test_retain_graph_gives_identical_gradients():
    inputs, _, _, weights = _reference("slstm", 5, 17, 2, 64, torch.bfloat16, "random", 8)
    Wx, R, b, s0 = requires_grad(*inputs)
    states, last = flashrnn.flashrnn(Wx, R, b, s0, function="slstm", backend="triton")
    loss = weighted_loss(states, last, *weights)
    first = torch.autograd.grad(loss, [Wx, R, b, s0], retain_graph=True)
    second = torch.autograd.grad(loss, [Wx, R, b, s0])
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)


@on_gpu
def test_layouts_and_noncontiguous_inputs():
    inputs, ref, _, _ = _reference("gru", 6, 9, 3, 32, torch.float32, "random", 9)
    Wx, R, b, s0 = inputs
    cfg = flashrnn.FlashRNNConfig(function="gru", backend="triton", input_shape="TBGHD",
                                  recurrent_shape="HPDG", bias_shape="HDG", output_shape="TSHBD")
    states, last = flashrnn.flashrnn(Wx.transpose(0, 1), R.permute(1, 3, 2, 0), b.permute(1, 2, 0),
                                     s0.permute(2, 0, 3, 1, 4), config=cfg)
    assert rel_err(states.permute(1, 3, 0, 2, 4), ref) <= 1e-4
    one = Wx[:1].expand(6, -1, -1, -1, -1)  # a stride-0 batch
    expected = flashrnn.flashrnn(one.contiguous(), R, b, function="gru", backend="triton")[0]
    assert torch.equal(flashrnn.flashrnn(one, R, b, function="gru", backend="triton")[0], expected)


@on_gpu
@pytest.mark.parametrize("function", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                      pytest.param("elman", marks=pytest.mark.slow),
                                      pytest.param("slstm", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(function):
    inputs, _, ref_grads, weights = _reference(function, 4, 12, 2, 32, torch.float32, "random", 13)

    def model(Wx, R, b, s0):
        states, last = flashrnn.flashrnn(Wx, R, b, s0, function=function, backend="triton")
        return weighted_loss(states, last, *weights)

    compiled = torch.compile(model, fullgraph=True)
    Wx, R, b, s0 = requires_grad(*inputs)
    grads = torch.autograd.grad(compiled(Wx, R, b, s0), [Wx, R, b, s0])
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 1e-4


# schema, fake kernel, autograd registration and AOT dispatch (torch.compile's path into the kernels)
@on_gpu
@pytest.mark.parametrize("function, D", [("elman", 128), pytest.param("slstm", 16, marks=pytest.mark.slow)])
def test_opcheck_on_cuda(function, D):
    Wx, R, b, s0 = random_problem(function, 3, 5, 2, D, dtype=torch.float32, device="cuda", seed=14)
    Wx, R, b, s0 = requires_grad(Wx, R, b, s0[:, :, 0])
    op = triton_backend.get_op(function)
    torch.library.opcheck(op, (Wx, R, b, s0, True, None, False, None, False))
    all_states, saved = op(Wx, R, b, s0, True, None, False, None, False)
    bw = getattr(torch.ops.flashrnn, f"{function}_triton_backward")
    torch.library.opcheck(bw, (torch.randn_like(all_states), all_states.detach(), saved, R.detach(), False, None, False))


@on_gpu
def test_head_dim_above_the_maximum_is_a_clear_error():
    Wx, R, b, _ = random_problem("lstm", 2, 3, 1, 256, dtype=torch.bfloat16, device="cuda", states="none")
    with pytest.raises(ValueError, match=r"backend='triton' runs head dims 1 to 128 .* got head_dim=256; use "
                                         r"backend='cuda'"):
        flashrnn.flashrnn(Wx, R, b, function="lstm", backend="triton")


@on_gpu
def test_first_call_time(capsys):
    """Prints the first call (Triton compile of a variant no other test uses, unless cached on disk from an
    earlier run) and the second call of forward + backward."""
    inputs, _, _, weights = _reference("elman", 8, 64, 4, 96, torch.float16, "random", 15)
    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        _run("elman", inputs, weights)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    with capsys.disabled():
        print(f"\n[triton] elman fp16 D=96 forward+backward: first call {times[0]:.2f} s (compile, or Triton's "
              f"disk cache), second call {times[1] * 1e3:.1f} ms")


# ---- CPU: no GPU needed -----------------------------------------------------------------------
def test_without_triton_the_module_imports_and_the_backend_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("flashrnn._triton_backend_without_triton", triton_backend.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.available()
    with pytest.raises(RuntimeError, match=r"backend='triton' needs the `triton` package.*pip install triton"):
        module.get_op("lstm")

    # through the API (skipping the CUDA-tensor check, so a CPU machine gets as far as the backend)
    monkeypatch.setattr(triton_backend, "triton", None)
    monkeypatch.setattr(_validate, "cuda_inputs", lambda backend, Wx: None)
    Wx, R, b, _ = random_problem("lstm", 2, 3, 1, 16, dtype=torch.float32, states="none")
    with pytest.raises(RuntimeError, match=r"CUDA builds of torch.*pip install triton"):
        flashrnn.flashrnn(Wx, R, b, function="lstm", backend="triton")


def test_head_dim_buckets():
    assert [triton_backend.head_dim_bucket(d) for d in (1, 16, 20, 32, 48, 64, 80, 128)] == \
        [16, 16, 32, 32, 64, 64, 128, 128]
    with pytest.raises(ValueError, match=r"head dims 1 to 128 .*got head_dim=144; use backend='cuda'"):
        triton_backend.head_dim_bucket(144)


@needs_triton
def test_ops_have_the_schema_of_the_cuda_ops():
    for function in CELLS:
        fw = getattr(torch.ops.flashrnn, f"{function}_triton").default._schema
        bw = getattr(torch.ops.flashrnn, f"{function}_triton_backward").default._schema
        assert str(fw) == f"flashrnn::{function}_triton{_ops.FORWARD_SCHEMA}"
        assert str(bw) == f"flashrnn::{function}_triton_backward{_ops.BACKWARD_SCHEMA}"
        assert triton_backend.get_op(function) is getattr(torch.ops.flashrnn, f"{function}_triton")


@needs_triton
@pytest.mark.parametrize("function", list(CELLS))
def test_cpu_kernels_are_the_reference(function):
    spec = CELLS[function]
    Wx, R, b, s0 = random_problem(function, 3, 6, 2, 16, dtype=torch.float32, seed=16)
    s0 = s0[:, :, 0]
    op = triton_backend.get_op(function)
    all_states, saved = op(Wx, R, b, s0, True, 0.7, False, None, False)
    ref_states, ref_saved = reference.forward_op(spec, Wx, R, b, s0, True, 0.7)
    assert torch.equal(all_states, ref_states) and torch.equal(saved, ref_saved)
    grad = torch.randn_like(all_states)
    bw = getattr(torch.ops.flashrnn, f"{function}_triton_backward")
    got = bw(grad, all_states, saved, R, True, 0.2, False)
    want = reference.backward_op(spec, grad, all_states, saved, R, True, 0.2)
    assert all(torch.equal(a, r) for a, r in zip(got, want))

    # autograd through the op equals autograd through the CUDA op's CPU kernel; torch.library's checks
    leaves = requires_grad(Wx, R, b, s0)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(op, (*leaves, True, 0.5, False, 0.3, False), test_utils=checks)
    torch.library.opcheck(bw, (grad, all_states, saved, R, False, 0.3, False), test_utils=checks)
    states, _ = op(*leaves, True, None, False, 0.3, False)
    grads = torch.autograd.grad((states * grad).sum(), leaves)
    leaves_ = requires_grad(Wx, R, b, s0)
    cuda_op_states, _ = _ops.get_op(function, "alternating")(*leaves_, True, None, False, 0.3, False)
    expected = torch.autograd.grad((cuda_op_states * grad).sum(), leaves_)
    assert all(torch.equal(a, r) for a, r in zip(grads, expected))


@needs_triton
def test_cpu_ops_trace_for_torch_compile():
    """AOT dispatch (what torch.compile does with a triton_op) traces the reference math for CPU tensors
    instead of the Triton kernels. ~5 s, so one cell and T=2."""
    Wx, R, b, s0 = random_problem("elman", 2, 2, 1, 16, dtype=torch.float32, seed=19)
    leaves = requires_grad(Wx, R, b, s0[:, :, 0])
    torch.library.opcheck(triton_backend.get_op("elman"), (*leaves, True, 0.5, False, 0.3, False),
                          test_utils=("test_aot_dispatch_dynamic",))


# ---- CPU: the kernels in Triton's interpreter -------------------------------------------------
# (B, T, N, D, dtype, states, r_on_chip, forward_clipval, recurrent_cut, recurrent_clipval). bf16 is
# left out: the interpreter's tl.dot on bf16 operands returns garbage (triton 3.9), fp16 is fine.
INTERPRETER_CASES = [
    (17, 5, 2, 48, torch.float32, "random", True, None, False, None),  # 2 batch tiles, masked bucket tail
    (3, 4, 1, 16, torch.float32, "random", False, 0.3, False, 0.05),  # R streamed, both clips
    (3, 4, 2, 32, torch.float32, "zeros", True, 0.3, True, None),     # cut
    (5, 3, 1, 16, torch.float16, "random", True, None, False, None),
]


@pytest.mark.skipif(not (INTERPRET and triton_backend.available()),
                    reason="runs the kernels on the CPU; set TRITON_INTERPRET=1 (and install triton)")
@pytest.mark.parametrize("case", INTERPRETER_CASES, ids=lambda c: "B{}-T{}-N{}-D{}-{}-{}-chip{}".format(
    *c[:4], str(c[4]).split(".")[-1], c[5], c[6]))
@pytest.mark.parametrize("function", list(CELLS))
def test_kernels_in_the_interpreter_match_the_reference_ops(function, case):
    B, T, N, D, dtype, states, r_on_chip, forward_clipval, recurrent_cut, recurrent_clipval = case
    spec = CELLS[function]
    Wx, R, b, s0 = random_problem(function, B, T, N, D, dtype=dtype, states=states, seed=17)
    s0 = s0[:, :, 0]
    want = reference.forward_op(spec, Wx, R, b, s0, True, forward_clipval)
    got = triton_backend.forward(spec, Wx, R, b, s0, True, forward_clipval, r_on_chip=r_on_chip)
    grad = torch.randn(want[0].shape, generator=torch.Generator().manual_seed(18)).to(dtype)
    want += reference.backward_op(spec, grad, *want, R, recurrent_cut, recurrent_clipval)
    with warnings.catch_warnings():  # the backward reads the reference's buffers: errors don't mix
        warnings.simplefilter("ignore")  # numpy: 0/0 in the padding rows of a batch tile (never stored)
        got += triton_backend.backward(spec, grad, *want[:2], R, recurrent_cut, recurrent_clipval,
                                       r_on_chip=r_on_chip)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    errors = {name: rel_err(a, r) for name, a, r in
              zip(["all_states", "saved", "dg", "dR", "db", "dstates0"], got, want)}
    assert all(e <= tol for e in errors.values()), errors


@pytest.mark.skipif(not (INTERPRET and triton_backend.available()),
                    reason="runs the kernels on the CPU; set TRITON_INTERPRET=1 (and install triton)")
@pytest.mark.parametrize("function", list(CELLS))
def test_kernels_in_the_interpreter_stay_in_bounds(function, monkeypatch):
    """The recurrent kernels load the next step's inputs one step ahead; the loads past the last step are
    masked off. Every masked-in address of each load and store must lie inside one tensor argument."""
    from triton.runtime import interpreter
    np = pytest.importorskip("numpy")
    executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
    if not all(hasattr(c, a) for c, a in ((executor, "_init_args_hst"), (builder, "create_masked_load"),
                                          (builder, "create_masked_store"))):
        pytest.skip("this triton's interpreter has other internals")
    extents, outside = [], []

    def init_args(self, args, kwargs):
        extents[:] = [(x.data_ptr(), x.data_ptr() + x.element_size() * (1 + sum(
            (n - 1) * s for n, s in zip(x.shape, x.stride())))) for x in [*args, *kwargs.values()]
            if isinstance(x, torch.Tensor) and x.numel() > 0]
        return init_args.wrapped(self, args, kwargs)

    def checked(wrapped):
        def access(self, ptrs, *args):
            mask = (args[0] if wrapped is load else args[1]).data.astype(bool)  # (mask, other) or (value, mask)
            addresses = np.broadcast_to(ptrs.data, mask.shape)[mask].astype(np.uint64)
            if addresses.size and not any(((lo <= addresses) & (addresses < hi)).all() for lo, hi in extents):
                outside.append(wrapped.__name__)
            return wrapped(self, ptrs, *args)
        return access

    init_args.wrapped, load, store = executor._init_args_hst, builder.create_masked_load, builder.create_masked_store
    monkeypatch.setattr(executor, "_init_args_hst", init_args)
    monkeypatch.setattr(builder, "create_masked_load", checked(load))
    monkeypatch.setattr(builder, "create_masked_store", checked(store))
    spec = CELLS[function]
    for T in (1, 3):
        Wx, R, b, s0 = random_problem(function, 17, T, 2, 48, dtype=torch.float32, seed=20)
        states, saved = triton_backend.forward(spec, Wx, R, b, s0[:, :, 0], True, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy: 0/0 in the padding rows of a batch tile (never stored)
            triton_backend.backward(spec, torch.randn_like(states), states, saved, R, False, None)
    assert not outside, f"{len(outside)} accesses outside the tensor arguments: {sorted(set(outside))}"
