"""Checks of user input for flashrnn.flashrnn(): one clear ValueError/TypeError per mistake,
naming the argument, what was received and what was expected. Runs before any kernel."""
from __future__ import annotations

import torch

from ._cells import CELLS, CellSpec

# backend name -> kernel family ("vanilla", "alternating", "fused", "triton")
BACKENDS = {
    "vanilla": "vanilla",
    "vanilla_fwbw": "vanilla",
    "cuda": "alternating",
    "cuda_alternating": "alternating",
    "cuda_fused": "fused",
    "triton": "triton",
    "triton_fused": "triton",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
INPUT_SHAPES = ("BTGHD", "TBGHD")
RECURRENT_SHAPES = ("GHDP", "HGDP", "HPGD", "HPDG")
BIAS_SHAPES = ("GHD", "HGD", "HDG")


def _one_of(values) -> str:
    return ", ".join(repr(v) for v in values)


def function_spec(function) -> CellSpec:
    if not isinstance(function, str):
        raise TypeError(f"flashrnn: function must be a string, got {type(function).__name__}")
    if function not in CELLS:
        raise ValueError(f"flashrnn: unknown function={function!r}; expected one of {_one_of(CELLS)}")
    return CELLS[function]


def backend_family(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"flashrnn: backend must be a string, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"flashrnn: unknown backend={backend!r}; expected one of {_one_of(BACKENDS)}")
    return BACKENDS[backend]


def dtype_of(name: str, dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"flashrnn: unknown {name}={dtype!r}; expected one of {_one_of(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


def layout(name: str, value, allowed: tuple[str, ...] | None, letters: str) -> str:
    if not isinstance(value, str) or (allowed is not None and value not in allowed) or \
            sorted(value) != sorted(letters):
        expected = _one_of(allowed) if allowed else f"a permutation of {letters!r}"
        raise ValueError(f"flashrnn: {name}={value!r} is not supported; expected {expected}")
    return value


def tensor(name: str, x, dims: int, described: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"flashrnn: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dims:
        raise ValueError(f"flashrnn: {name} has shape {tuple(x.shape)} ({x.dim()} dims), expected {dims} dims "
                         f"{described}")
    if not x.is_floating_point():
        raise TypeError(f"flashrnn: {name} has dtype {x.dtype}, expected a floating-point tensor")
    return x


def shapes(spec: CellSpec, Wx: torch.Tensor, R: torch.Tensor, b: torch.Tensor, states, layouts: dict) -> None:
    """Wx [B, T, Gw, N, D], R [Gr, N, D, D], b [Gb, N, D], states [S, B, N, D] (internal order)."""
    B, T, G, N, D = Wx.shape
    fn = f"function={spec.name!r}"
    takes = (f"{fn} takes Wx [B, T, {spec.gates_w}, N, D], R [{spec.gates_r}, N, D, D], "
             f"b [{spec.gates_b}, N, D]")
    if G != spec.gates_w:
        raise ValueError(f"flashrnn: Wx has {G} gates (shape {tuple(Wx.shape)} in layout 'BTGHD'), but {takes}")
    if B == 0 or T == 0:
        raise ValueError(f"flashrnn: Wx has batch size B={B} and sequence length T={T} (shape "
                         f"{tuple(Wx.shape)} in layout 'BTGHD'); both must be at least 1")
    if N == 0 or D == 0:
        raise ValueError(f"flashrnn: Wx has N={N} heads of dimension D={D}; both must be at least 1")
    if tuple(R.shape) != (spec.gates_r, N, D, D):
        raise ValueError(f"flashrnn: R has shape {tuple(R.shape)} in layout 'GHDP' (given as "
                         f"{layouts['recurrent_shape']!r}), expected (G, N, D, D) = ({spec.gates_r}, {N}, {D}, {D}) "
                         f"to match Wx with N={N}, D={D} and {fn}")
    if tuple(b.shape) != (spec.gates_b, N, D):
        raise ValueError(f"flashrnn: b has shape {tuple(b.shape)} in layout 'GHD' (given as "
                         f"{layouts['bias_shape']!r}), expected (G, N, D) = ({spec.gates_b}, {N}, {D}) "
                         f"to match Wx with N={N}, D={D} and {fn}")
    if states is not None and tuple(states.shape) != (spec.states, B, 1, N, D):
        raise ValueError(f"flashrnn: states has shape {tuple(states.shape)} in layout 'SBTHD' (given as "
                         f"{layouts['output_shape']!r}), expected (S, B, 1, N, D) = ({spec.states}, {B}, 1, {N}, {D}) "
                         f"for {fn} (states {', '.join(spec.state_names)}) and Wx with B={B}")


def same_dtype_and_device(named: dict[str, torch.Tensor]) -> None:
    (first_name, first), *rest = named.items()
    for name, x in rest:
        if x.dtype != first.dtype:
            raise TypeError(f"flashrnn: {name} has dtype {x.dtype} but {first_name} has {first.dtype}; all inputs "
                            "must share one dtype")
        if x.device != first.device:
            raise ValueError(f"flashrnn: {name} is on {x.device} but {first_name} is on {first.device}; all "
                             "inputs must be on one device")


def cuda_inputs(backend: str, Wx: torch.Tensor) -> None:
    if Wx.device.type != "cuda":
        raise ValueError(f"flashrnn: backend={backend!r} runs on CUDA tensors, but Wx is on {Wx.device}; move the "
                         "inputs to a GPU or use backend='vanilla'")
    if Wx.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"flashrnn: backend={backend!r} runs float32, float16 and bfloat16, got {Wx.dtype}; use "
                         "backend='vanilla' for other dtypes")
