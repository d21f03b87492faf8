"""python -m flashrnn       : environment, then the README example on the best backend, checked
                            against the vanilla backend, with timings.
   python -m flashrnn info  : version, torch, the archs and kernels in the installed core, the GPU
                            and whether the core can run on it."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import _core, flashrnn, __version__
from ._cells import CELLS


def _gpu_status() -> tuple[str, bool, str]:
    """(GPU description, whether the CUDA core runs on it, why not)."""
    if not torch.cuda.is_available():
        return "none (torch.cuda.is_available() is False)", False, "no CUDA GPU is visible"
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = f"{torch.cuda.get_device_name(index)}, compute capability {major}.{minor}"
    if not _core.has_cuda_core():
        return name, False, "this flashrnn was built without the CUDA core"
    if major < 8:
        return name, False, f"the kernels need compute capability >= 8.0 (Ampere); this GPU has {major}.{minor}"
    ok, why = _core._C.kernel_image_available(index)
    return name, ok, "" if ok else f"the installed core has no code for sm_{major}{minor} ({why})"


def info() -> bool:
    build = _core.build_info()
    gpu, runs, why = _gpu_status()
    print(f"flashrnn {__version__}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    if build.get("import_error"):
        print(f"core: not importable ({build['import_error']})")
    elif not build["with_cuda"]:
        print("core: built WITHOUT CUDA (only backend='vanilla')")
    else:
        cuda = build["cuda_runtime_version"]
        print(f"core: CUDA runtime {cuda // 1000}.{cuda % 1000 // 10} (static), archs {', '.join(build['cuda_archs'])}")
        print(f"  cells: {', '.join(CELLS)}; backends 'cuda' (any head dim) and 'cuda_fused' (one CTA per head "
              "for these head dims, per dtype; larger heads spread over several CTAs where they fit the GPU):")
        for dtype, dims in build["fused_head_dims"].items():
            print(f"    {dtype}: multiples of 16 up to {max(dims)}")
    print(f"GPU: {gpu}")
    print("the CUDA core runs on it" if runs else f"the CUDA core cannot run: {why}; backend='vanilla' is used")
    if runs:
        dims = ", ".join(f"{k} {v}" for k, v in largest_fused_head_dims("lstm").items())
        print(f"  largest LSTM head dim that runs fused on it (batch 16, one head): {dims}")
    return runs


def _runs_fused(family: int, why: str) -> bool:
    return family != 0 or not why  # 0 with no reason: the alternating kernels chosen as faster


def largest_fused_head_dims(function: str, batch: int = 16, heads: int = 1) -> dict[str, int]:
    """Per dtype, the largest multiple of 64 (up to 8192) whose forward and backward both run fused on
    the current GPU, or could where the alternating kernels are chosen as the faster ones (planned
    from its limits; nothing is launched)."""
    from ._ops import DTYPE_CODES
    core, index, code = _core._C, torch.cuda.current_device(), CELLS[function].code
    out = {}
    for dtype, dcode in DTYPE_CODES.items():
        fits = [D for D in range(64, 8193, 64)
                if all(_runs_fused(*core.fused_family(code, dcode, batch, heads, D, index, bw)) for bw in (False, True))]
        out[str(dtype).split(".")[-1]] = max(fits, default=0)
    return out


def _example(device: str, dtype: torch.dtype, B: int, T: int, N: int, D: int):
    """The README example: a 12-head LSTM layer's recurrence."""
    g = torch.Generator(device="cpu").manual_seed(0)
    Wx = torch.randn(B, T, 4, N, D, generator=g)  # W x for gates i, f, z, o
    R = torch.randn(4, N, D, D, generator=g) / D ** 0.5
    b = torch.randn(4, N, D, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (Wx, R, b)]


def _time(fn, reps: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1000


def run() -> int:
    runs = info()
    print()
    if runs:
        device, dtype, backend, shape, reps = "cuda", torch.bfloat16, "cuda_fused", (16, 1024, 12, 64), 20
    else:
        device, dtype, backend, shape, reps = "cpu", torch.float32, "vanilla", (4, 64, 4, 32), 3
    B, T, N, D = shape
    Wx, R, b = _example(device, dtype, *shape)
    print(f"example: LSTM, B={B}, T={T}, {N} heads x {D}, {str(dtype).split('.')[-1]}, backend={backend!r} on {device}")
    with torch.no_grad():
        states, last = flashrnn(Wx, R, b, function="lstm", backend=backend)
        ref, _ = flashrnn(Wx.double(), R.double(), b.double(), function="lstm", backend="vanilla")
    err = ((states.double() - ref).norm() / ref.norm()).item()
    tol = 1e-2 if dtype != torch.float32 else 1e-4
    print(f"states {tuple(states.shape)}, last_states {tuple(last.shape)}; relative error vs float64 vanilla "
          f"{err:.2e} ({'ok' if err <= tol else 'TOO LARGE'}, tolerance {tol:g})")
    with torch.no_grad():
        ours = _time(lambda: flashrnn(Wx, R, b, function="lstm", backend=backend), reps)
        line = f"forward: {backend} {ours:.3f} ms"
        if backend != "vanilla":
            vanilla = _time(lambda: flashrnn(Wx, R, b, function="lstm", backend="vanilla"), 2)
            line += f", vanilla {vanilla:.3f} ms ({vanilla / ours:.0f}x slower)"
    print(line)
    return 0 if err <= tol else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashrnn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "info"])
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
