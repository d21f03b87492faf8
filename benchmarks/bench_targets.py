"""Issue 4's target shapes only (T = 1024), ours and cuDNN side by side on one card in one run: the
short form of bench_kernels.py's multi-CTA rows, for a device call with little time left.
Appends a markdown table to --out (default BENCHMARKS.md).

    python benchmarks/bench_targets.py [--out BENCHMARKS.md] [--reps 20]
"""
from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import table  # noqa: E402
from bench_kernels import DT, time_cudnn, time_ours  # noqa: E402

# (function, B, N, D, dtype): the targets' rows of ours, then cuDNN's
OURS = [("lstm", 16, 1, 768, "bf16"), ("lstm", 16, 1, 768, "fp16"), ("gru", 16, 1, 768, "bf16"),
        ("slstm", 16, 1, 768, "bf16"), ("lstm", 16, 3, 256, "bf16"), ("lstm", 64, 1, 768, "fp16")]
CUDNN = [("lstm", 16, 768, "fp16"), ("lstm", 16, 768, "bf16"), ("gru", 16, 768, "bf16"), ("lstm", 64, 768, "fp16")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    T, rows = 1024, []
    for function, B, N, D, dt in OURS:
        fw, fwbw, _ = time_ours(function, "cuda_fused", B, T, N, D, DT[dt], args.reps)
        rows.append([f"{function} cuda_fused", f"{D} x {N}", B, dt, fw, fwbw])
        print(rows[-1], flush=True)
    for kind, B, H, dt in CUDNN:
        fw, fwbw = time_cudnn(kind, B, T, H, DT[dt], args.reps)
        rows.append([f"cuDNN nn.{kind.upper()}", f"{H} x 1", B, dt, fw, fwbw])
        print(rows[-1], flush=True)
    text = table(f"Issue 4's targets, T = {T}", ["kernel", "D x N", "B", "dtype", "fw ms", "fwbw ms"], rows)
    print(text)
    with open(args.out, "a") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
