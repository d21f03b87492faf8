"""Our backends side by side with cuDNN (torch.nn.LSTM/GRU) and vanilla on one card, one run.

Configurations of ../shared/ANCHORS.md: B = 16, T = 1024, hidden N * D = 768, bf16 unless noted.
"fw" = forward without grad; "fwbw" = forward + states[0].sum().backward() (as the anchors).
cuDNN rows include the input projection (nn.LSTM takes x, not Wx), as in the anchors.
Appends a markdown table to --out (default BENCHMARKS.md).

    python benchmarks/bench_kernels.py [--suite full|quick] [--out BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import flashrnn
from flashrnn.__main__ import largest_fused_head_dims
from flashrnn._cells import CELLS

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import median_ms, table  # noqa: E402

DT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def inputs(function, B, T, N, D, dtype, sets=3, grad=False):
    spec = CELLS[function]
    out = []
    for _ in range(sets):
        Wx = torch.randn(B, T, spec.gates_w, N, D, device="cuda", dtype=dtype)
        R = (torch.randn(spec.gates_r, N, D, D, device="cuda") / D ** 0.5).to(dtype)
        b = torch.randn(spec.gates_b, N, D, device="cuda", dtype=dtype)
        out.append([x.requires_grad_(grad) for x in (Wx, R, b)])
    return out


def time_ours(function, backend, B, T, N, D, dtype, reps):
    def fw(Wx, R, b):
        with torch.no_grad():
            flashrnn.flashrnn(Wx, R, b, function=function, backend=backend)

    def fwbw(Wx, R, b):
        states, _ = flashrnn.flashrnn(Wx, R, b, function=function, backend=backend)
        states[0].sum().backward()

    t0 = time.perf_counter()
    fw(*inputs(function, B, 2, N, D, dtype, sets=1)[0])
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    return (median_ms(fw, inputs(function, B, T, N, D, dtype), reps=reps),
            median_ms(fwbw, inputs(function, B, T, N, D, dtype, grad=True), reps=reps), first)


def time_cudnn(kind, B, T, H, dtype, reps):
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    m = cls(H, H, batch_first=True).cuda().to(dtype)
    xs = [[torch.randn(B, T, H, device="cuda", dtype=dtype, requires_grad=True)] for _ in range(3)]

    def fw(x):
        with torch.no_grad():
            m(x)

    def fwbw(x):
        m(x)[0].sum().backward()

    return median_ms(fw, xs, reps=reps), median_ms(fwbw, xs, reps=reps)


def fused_limits(B, N=1):
    """The largest head dim that runs fused, forward and backward, per cell and dtype on this GPU."""
    lines = [f"Largest head dim that runs fused (forward and backward), B = {B}, {N} head{'s' if N > 1 else ''}:", ""]
    for function in CELLS:
        dims = largest_fused_head_dims(function, B, N)
        lines.append(f"- {function}: " + ", ".join(f"{k} {v}" for k, v in dims.items()))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="full", choices=["full", "quick"])
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    B, T = 16, 1024
    rows = []

    def ours(name, function, backend, B, N, D, dt, reps=args.reps):
        fw, fwbw, first = time_ours(function, backend, B, T, N, D, DT[dt], reps)
        rows.append([name, f"{D} x {N}", B, dt, fw, fwbw, f"{first * 1000:.0f} ms"])
        print(rows[-1], flush=True)

    def cudnn(kind, B, H, dt):
        fw, fwbw = time_cudnn(kind, B, T, H, DT[dt], args.reps)
        rows.append([f"cuDNN nn.{kind.upper()}", f"{H} x 1", B, dt, fw, fwbw, "-"])
        print(rows[-1], flush=True)

    heads = [(16, 48), (32, 24), (64, 12), (128, 6), (256, 3), (768, 1)]
    if args.suite == "quick":
        heads = [(64, 12), (128, 6), (256, 3), (768, 1)]
    for D, N in heads:
        ours("lstm cuda_fused", "lstm", "cuda_fused", B, N, D, "bf16")
    # Heads above one SM: the multi-CTA fused kernels (issue 4's targets)
    ours("lstm cuda_fused", "lstm", "cuda_fused", B, 1, 768, "fp16")
    ours("gru cuda_fused", "gru", "cuda_fused", B, 1, 768, "bf16")
    ours("slstm cuda_fused", "slstm", "cuda_fused", B, 1, 768, "bf16")
    ours("lstm cuda_fused", "lstm", "cuda_fused", 64, 1, 768, "fp16")
    for function in ("gru", "slstm"):
        ours(f"{function} cuda_fused", function, "cuda_fused", B, 3, 256, "bf16")
    # 768 x 2: the L2 variant forward, the wide clusters backward (sm_90). Heads whose CTAs do not all
    # fit at once: 768 x 3 in wide clusters; 1024 x 3 and 2048 x 1 at B = 64 forward in waves of
    # launches, backward in the alternating kernels (core.cpp); FLASHRNN_MULTI_BACKWARD=1: the L2
    # variant's backward in waves
    ours("lstm cuda_fused", "lstm", "cuda_fused", B, 2, 768, "bf16")
    ours("lstm cuda_fused", "lstm", "cuda_fused", B, 3, 768, "bf16")
    ours("lstm cuda_fused", "lstm", "cuda_fused", B, 3, 1024, "bf16")
    ours("lstm cuda_fused", "lstm", "cuda_fused", 64, 1, 2048, "bf16")
    os.environ["FLASHRNN_MULTI_BACKWARD"] = "1"
    ours("lstm cuda_fused (FLASHRNN_MULTI_BACKWARD=1)", "lstm", "cuda_fused", 64, 1, 2048, "bf16")
    del os.environ["FLASHRNN_MULTI_BACKWARD"]
    # 256 x 3 and 768 x 1 run in clusters (distributed shared memory) on sm_90; the L2 variant for comparison
    os.environ["FLASHRNN_MULTI_L2"] = "1"
    ours("lstm cuda_fused (L2 variant)", "lstm", "cuda_fused", B, 3, 256, "bf16")
    ours("lstm cuda_fused (L2 variant)", "lstm", "cuda_fused", B, 1, 768, "bf16")
    ours("lstm cuda_fused (L2 variant)", "lstm", "cuda_fused", 64, 1, 768, "fp16")
    del os.environ["FLASHRNN_MULTI_L2"]
    # the wide cluster kernels (R partly in registers) where they are not the default (B <= 32)
    os.environ["FLASHRNN_WIDE"] = "1"
    ours("lstm cuda_fused (FLASHRNN_WIDE=1)", "lstm", "cuda_fused", B, 1, 768, "bf16")
    del os.environ["FLASHRNN_WIDE"]
    for D, N in [(64, 12), (768, 1)]:
        ours("lstm cuda (alternating)", "lstm", "cuda", B, N, D, "bf16")
    for function in ("slstm", "gru", "elman"):
        ours(f"{function} cuda_fused", function, "cuda_fused", B, 12, 64, "bf16")
    try:
        import triton  # noqa: F401  (the Triton backend is optional)
        for dt in ("bf16", "fp32"):
            ours("lstm triton", "lstm", "triton", B, 12, 64, dt)
    except ImportError:
        print("triton is not installed: no Triton rows")
    ours("lstm cuda_fused", "lstm", "cuda_fused", 256, 12, 64, "bf16")
    for dt in ("fp16", "fp32"):
        ours("lstm cuda_fused", "lstm", "cuda_fused", B, 12, 64, dt)
    if args.suite == "full":
        ours("gru cuda (alternating)", "gru", "cuda", B, 1, 768, "bf16")
        ours("lstm cuda (alternating)", "lstm", "cuda", B, 3, 1024, "bf16")
        ours("lstm cuda (alternating)", "lstm", "cuda", 64, 1, 2048, "bf16")
        ours("lstm vanilla", "lstm", "vanilla", B, 12, 64, "bf16", reps=3)
    for dt in ("fp16", "bf16"):
        cudnn("lstm", B, 768, dt)
    cudnn("lstm", 64, 768, "fp16")
    cudnn("gru", B, 768, "bf16")
    text = table(f"Kernels, B = {B} (unless noted), T = {T}, hidden 768",
                 ["kernel", "D x N", "B", "dtype", "fw ms", "fwbw ms", "first call"], rows)
    text += "\n" + fused_limits(B) + "\n" + fused_limits(64, 3)
    print(text)
    with open(args.out, "a") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
