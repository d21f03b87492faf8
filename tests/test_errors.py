"""Every user-facing error message (messages are API): a clear ValueError/TypeError naming the
argument, what was received and what was expected."""
from __future__ import annotations

import pytest
import torch

import flashrnn

from conftest import random_problem


def lstm(**kw):
    return random_problem("lstm", 2, 3, 2, 16, dtype=torch.float32, **kw)


def call(Wx, R, b, states=None, **kw):
    kw.setdefault("backend", "vanilla")
    return flashrnn.flashrnn(Wx, R, b, states, **kw)


def test_unknown_function_backend_dtype():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match=r"unknown function='lsmt'; expected one of 'lstm', 'gru', 'elman', 'slstm'"):
        call(Wx, R, b, function="lsmt")
    with pytest.raises(ValueError, match=r"unknown backend='cudnn'; expected one of 'vanilla'"):
        call(Wx, R, b, backend="cudnn")
    with pytest.raises(ValueError, match=r"unknown dtype='bf16'; expected one of 'float32'"):
        call(Wx, R, b, dtype="bf16")
    with pytest.raises(TypeError, match="function must be a string"):
        call(Wx, R, b, function=4)


def test_wrong_rank():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match=r"Wx has shape \(2, 3, 4, 32\) \(4 dims\), expected 5 dims \[B, T, G, N, D\]"):
        call(Wx.flatten(3), R, b)
    with pytest.raises(ValueError, match=r"R has shape .* expected 4 dims \[G, N, D, D\]"):
        call(Wx, R[0], b)
    with pytest.raises(ValueError, match=r"b has shape .* expected 3 dims"):
        call(Wx, R, b[0])
    with pytest.raises(TypeError, match="Wx must be a torch.Tensor, got list"):
        call([1.0], R, b)


def test_gate_count_for_the_function():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match=r"Wx has 4 gates .* but function='gru' takes Wx \[B, T, 3, N, D\], "
                                         r"R \[3, N, D, D\], b \[4, N, D\]"):
        call(Wx, R, b, function="gru")


def test_mismatched_heads_and_dims():
    Wx, R, b, s0 = lstm()
    with pytest.raises(ValueError, match=r"R has shape \(4, 2, 16, 8\) .* expected \(G, N, D, D\) = \(4, 2, 16, 16\)"):
        call(Wx, R[..., :8], b)
    with pytest.raises(ValueError, match=r"b has shape \(4, 3, 16\) .* expected \(G, N, D\) = \(4, 2, 16\)"):
        call(Wx, R, torch.zeros(4, 3, 16))
    with pytest.raises(ValueError, match=r"states has shape \(2, 2, 1, 2, 8\) .* expected \(S, B, 1, N, D\) = "
                                         r"\(2, 2, 1, 2, 16\)"):
        call(Wx, R, b, s0[..., :8])
    with pytest.raises(ValueError, match=r"states has shape \(1, 2, 1, 2, 16\) .* \(2, 2, 1, 2, 16\) for "
                                         r"function='lstm' \(states h, c\)"):
        call(Wx, R, b, s0[:1])


def test_mixed_dtypes_and_devices():
    Wx, R, b, _ = lstm()
    with pytest.raises(TypeError, match="R has dtype torch.float64 but Wx has torch.float32"):
        call(Wx, R.double(), b)
    with pytest.raises(ValueError, match=r"dtype='bfloat16' but the inputs are torch.float32"):
        call(Wx, R, b, dtype="bfloat16")
    with pytest.raises(TypeError, match="b has dtype torch.int64, expected a floating-point tensor"):
        call(Wx, R, b.long())
    meta = torch.empty(b.shape, device="meta")
    with pytest.raises(ValueError, match=r"b is on meta but Wx is on cpu"):
        call(Wx, R, meta)


def test_empty_batch_or_sequence():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match=r"batch size B=0 and sequence length T=3"):
        call(Wx[:0], R, b)
    with pytest.raises(ValueError, match=r"batch size B=2 and sequence length T=0"):
        call(Wx[:, :0], R, b)


def test_cpu_tensors_with_a_cuda_backend():
    Wx, R, b, _ = lstm()
    for backend in ("cuda", "cuda_fused"):
        with pytest.raises(ValueError, match=rf"backend='{backend}' runs on CUDA tensors, but Wx is on cpu"):
            call(Wx, R, b, backend=backend)


def test_layout_strings():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match=r"input_shape='BGTHD' is not supported; expected 'BTGHD', 'TBGHD'"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", input_shape="BGTHD"))
    with pytest.raises(ValueError, match=r"output_shape='SBTHX' is not supported; expected a permutation of 'SBTHD'"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", output_shape="SBTHX"))


def test_config_fields_that_cannot_be_honoured():
    Wx, R, b, _ = lstm()
    with pytest.raises(ValueError, match="config.constants=.* is not supported"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", constants={"EPS": 1}))
    with pytest.raises(ValueError, match="config.dtype_r='bfloat16' differs from the compute dtype"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", dtype_r="bfloat16"))
    with pytest.raises(ValueError, match="config.num_heads=3 but the inputs have num_heads=2"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", num_heads=3))
    with pytest.raises(ValueError, match="initial_val has 3 values, expected one per state"):
        call(Wx, R, b, config=flashrnn.FlashRNNConfig(backend="vanilla", initial_val=[0, 1, 2]))


def test_ops_on_cuda_need_multiples_of_16_from_direct_callers():
    if not torch.cuda.is_available() or not flashrnn.has_cuda_core():
        pytest.skip("needs a GPU")
    Wx, R, b, s0 = random_problem("lstm", 2, 3, 1, 20, dtype=torch.float32, device="cuda")
    with pytest.raises(ValueError, match="head dim that is a multiple of 16, got 20"):
        torch.ops.flashrnn.lstm_fused(Wx, R, b, s0[:, :, 0], True, None, False, None, False)


def test_missing_core_is_reported_clearly(monkeypatch):
    from flashrnn import _core
    monkeypatch.setattr(_core, "_C", None)
    monkeypatch.setattr(_core, "_IMPORT_ERROR", "no module named flashrnn._C")
    with pytest.raises(RuntimeError, match="needs the compiled core flashrnn._C"):
        _core.require_cuda_core("cuda")
