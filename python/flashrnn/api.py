"""flashrnn.flashrnn() and FlashRNNConfig: the API of the original FlashRNN (spec section 1).

Normalizes layouts, validates, picks the backend and calls the ops in _ops.py; no math here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import _validate, reference
from ._cells import CELLS


@dataclass
class FlashRNNConfig:
    """Options of one recurrence; field names and defaults follow the original FlashRNNConfig.

    dtype: the compute dtype; None (default) takes the dtype of the inputs. Inputs of another
      dtype are an error, except inside torch.autocast (then they are cast, as the original does).
    gradient_recurrent_cut: drop the R^T path from dh_{t-1} in backward (spec 3.3).
    gradient_recurrent_clipval: clamp the gradient carried into h_{t-1} from step t (spec 3.4);
      unlike the original it does not also clip the forward.
    forward_clipval: clamp h to [-v, v] after each step (spec 3.5); gradients pass straight
      through the clamp. The original ignored this field.
    allow_tf32: fp32 inputs may use one TF32 product (faster, ~1e-3 relative error) instead of
      3xTF32 (fp32 accuracy).
    input_shape 'BTGHD' | 'TBGHD'; output_shape: any order of 'SBTHD' (also the layout of
      `states`, with T = 1); recurrent_shape 'GHDP' | 'HGDP' | 'HPGD' | 'HPDG';
      bias_shape 'GHD' | 'HGD' | 'HDG'.
    """

    function: str = "lstm"
    backend: str = "cuda_fused"
    dtype: str | torch.dtype | None = None
    gradient_recurrent_cut: bool = False
    gradient_recurrent_clipval: float | None = None
    forward_clipval: float | None = None
    allow_tf32: bool = False
    input_shape: str = "BTGHD"
    output_shape: str = "SBTHD"
    recurrent_shape: str = "GHDP"
    bias_shape: str = "GHD"
    hidden_dim: int = -1
    num_heads: int = -1
    head_dim: int = -1
    batch_size: int = 8  # kept for compatibility; kernels take any batch size at run time
    initial_val: float | Sequence[float] = 0.0
    enable_automatic_mixed_precision: bool = True
    constants: dict | None = None
    trainable_r: bool = True
    trainable_b: bool = True
    dtype_acc: str | None = None
    dtype_b: str | None = None
    dtype_r: str | None = None
    dtype_w: str | None = None
    dtype_g: str | None = None
    dtype_s: str | None = None
    dtype_a: str | None = None
    _extra: dict = field(default_factory=dict, repr=False)

    # Derived from `function` (fields in the original, overridden there by the function).
    @property
    def num_states(self) -> int:
        return CELLS[self.function].states

    @property
    def num_gates_r(self) -> int:
        return CELLS[self.function].gates_r

    @property
    def num_gates_w(self) -> int:
        return CELLS[self.function].gates_w

    @property
    def num_gates_i(self) -> int:
        return CELLS[self.function].gates_b

    @property
    def num_gates_t(self) -> int:
        return CELLS[self.function].gates_b

    @property
    def simple_agg(self) -> bool:
        return self.function != "gru"


def _permutation(source: str, target: str) -> list[int]:
    return [source.index(c) for c in target]


def _check_config(cfg: FlashRNNConfig, dtype: torch.dtype, N: int, D: int) -> None:
    if cfg.constants:
        raise ValueError(f"flashrnn: config.constants={cfg.constants!r} is not supported (the original passed them "
                         "as compile-time defines; this build compiles nothing at run time)")
    for name in ("dtype_acc", "dtype_b", "dtype_r", "dtype_w", "dtype_g", "dtype_s", "dtype_a"):
        value = _validate.dtype_of(f"config.{name}", getattr(cfg, name))
        if value is not None and value != dtype and not (name == "dtype_acc" and value == torch.float32):
            raise ValueError(f"flashrnn: config.{name}={getattr(cfg, name)!r} differs from the compute dtype {dtype}; "
                             "mixed-precision layouts are not supported (states, gates and weights use one "
                             "dtype; accumulation is always fp32)")
    for name, value, actual in (("num_heads", cfg.num_heads, N), ("head_dim", cfg.head_dim, D),
                                ("hidden_dim", cfg.hidden_dim, N * D)):
        if value not in (-1, None) and value != actual:
            raise ValueError(f"flashrnn: config.{name}={value} but the inputs have {name}={actual}")


def _initial_states(cfg: FlashRNNConfig, spec, Wx: torch.Tensor) -> torch.Tensor:
    B, _, _, N, D = Wx.shape
    s0 = Wx.new_zeros((spec.states, B, N, D))
    init = cfg.initial_val
    if isinstance(init, (int, float)):
        return s0 + init if init else s0
    init = list(init)
    if len(init) != spec.states:
        raise ValueError(f"flashrnn: config.initial_val has {len(init)} values, expected one per state "
                         f"({spec.states} for function={spec.name!r})")
    return s0 + torch.tensor(init, dtype=Wx.dtype, device=Wx.device).view(-1, 1, 1, 1)


def flashrnn(Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, states: torch.Tensor | None = None,
             function: str = "lstm", config: FlashRNNConfig | None = None, backend: str = "cuda_fused",
             dtype: str | torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a recurrence over a whole sequence.

    Wx [B, T, G, N, D] input pre-activations (W x is computed by the caller), R [G, N, D, D]
    recurrent matrices (R[g, n, i, j]: output unit i, input unit j), b [G, N, D] biases, states
    [S, B, 1, N, D] initial states (zeros if None). With `config`, its function, backend and
    dtype are used instead of the arguments. Returns (states [S, B, T, N, D] after every step,
    last_states [S, B, 1, N, D]); states[0] is h. Layouts follow the config (spec 1.5).
    """
    cfg = config if config is not None else FlashRNNConfig(function=function, backend=backend, dtype=dtype)
    spec = _validate.function_spec(cfg.function)
    family = _validate.backend_family(cfg.backend)
    in_shape = _validate.layout("input_shape", cfg.input_shape, _validate.INPUT_SHAPES, "BTGHD")
    out_shape = _validate.layout("output_shape", cfg.output_shape, None, "SBTHD")
    r_shape = _validate.layout("recurrent_shape", cfg.recurrent_shape, _validate.RECURRENT_SHAPES, "GHDP")
    b_shape = _validate.layout("bias_shape", cfg.bias_shape, _validate.BIAS_SHAPES, "GHD")
    _validate.tensor("Wx", Wx, 5, f"[B, T, G, N, D] in layout {in_shape!r}")
    _validate.tensor("R", R, 4, f"[G, N, D, D] in layout {r_shape!r}")
    _validate.tensor("b", b, 3, f"[G, N, D] in layout {b_shape!r}")
    if states is not None:
        _validate.tensor("states", states, 5, f"[S, B, 1, N, D] in layout {out_shape!r}")
    want = _validate.dtype_of("dtype", cfg.dtype)
    device_type = Wx.device.type
    autocast = cfg.enable_automatic_mixed_precision and torch.is_autocast_enabled(device_type)
    if autocast:  # as the original's custom_fwd(cast_inputs=...): e.g. bf16 Wx from a Linear, fp32 R and b
        want = want or torch.get_autocast_dtype(device_type)
        Wx, R, b = Wx.to(want), R.to(want), b.to(want)
        states = None if states is None else states.to(want)
    named = {"Wx": Wx, "R": R, "b": b}
    if states is not None:
        named["states"] = states
    _validate.same_dtype_and_device(named)

    Wx = Wx.permute(_permutation(in_shape, "BTGHD"))
    R = R.permute(_permutation(r_shape, "GHDP"))
    b = b.permute(_permutation(b_shape, "GHD"))
    if states is not None:
        states = states.permute(_permutation(out_shape, "SBTHD"))
    _validate.shapes(spec, Wx, R, b, states,
                     {"recurrent_shape": r_shape, "bias_shape": b_shape, "output_shape": out_shape})

    if not autocast and want is not None and want != Wx.dtype:
        raise ValueError(f"flashrnn: dtype={cfg.dtype!r} but the inputs are {Wx.dtype}; cast the inputs or pass "
                         f"dtype=None to compute in the inputs' dtype")
    _check_config(cfg, Wx.dtype, Wx.shape[3], Wx.shape[4])
    s0 = _initial_states(cfg, spec, Wx) if states is None else states[:, :, 0]

    if family == "vanilla":
        out = reference.vanilla_forward(Wx, R, b, s0, spec.name, cfg.forward_clipval,
                                        cfg.gradient_recurrent_cut, cfg.gradient_recurrent_clipval)
    else:
        _validate.cuda_inputs(cfg.backend, Wx)
        out = _run_kernels(spec, family, cfg, Wx, R, b, s0)
    perm = _permutation("SBTHD", out_shape)
    return out.permute(perm), out[:, :, -1:].permute(perm)


def _run_kernels(spec, family: str, cfg: FlashRNNConfig, Wx, R, b, s0) -> torch.Tensor:
    """[S, B, T, N, D] from the ops of `family`; head dims are padded to a multiple of 16 with
    inert zero units (zero weights, bias, input and state keep those units at zero)."""
    if family == "triton":
        from . import triton_backend

        run = triton_backend.get_op(spec.name)
    else:
        from . import _ops

        run = _ops.get_op(spec.name, family)
    D = Wx.shape[-1]
    pad = -D % 16
    if pad:
        Wx, b, s0 = F.pad(Wx, (0, pad)), F.pad(b, (0, pad)), F.pad(s0, (0, pad))
        R = F.pad(R, (0, pad, 0, pad))
    need_saved = torch.is_grad_enabled() and any(t.requires_grad for t in (Wx, R, b, s0))
    all_states, _ = run(Wx, R, b, s0, need_saved, cfg.forward_clipval, cfg.gradient_recurrent_cut,
                        cfg.gradient_recurrent_clipval, cfg.allow_tf32)
    out = all_states[:, 1:].transpose(1, 2)
    return out[..., :D] if pad else out
