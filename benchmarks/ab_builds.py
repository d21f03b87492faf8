"""A/B timing of two or more builds of the package on one card, in one run.

Each build is a directory holding a built `flashrnn/` package (a copy of python/flashrnn with the
_C extension of that build), optionally followed by `:NAME=VALUE,...`, environment switches that
build runs with (the same directory may appear with different switches). The builds run one
after another, each in its own process, for --rounds rounds, so that drift of the card shows up
in the spread between rounds. Shapes: the multi-CTA ones of issue 4 (T = 1024, cuda_fused; the
forward and forward + backward medians).

    python benchmarks/ab_builds.py BUILD_DIR[:NAME=VALUE,...] [...] [--rounds 2] [--reps 7]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

SHAPES = [  # function, B, N, D, dtype
    ("lstm", 16, 1, 768, "bfloat16"), ("lstm", 16, 1, 768, "float16"), ("gru", 16, 1, 768, "bfloat16"),
    ("slstm", 16, 1, 768, "bfloat16"), ("lstm", 64, 1, 768, "float16"), ("lstm", 16, 1, 1024, "bfloat16"),
]


def split_build(spec):
    """'DIR' or 'DIR:NAME=VALUE,...' -> (DIR, {NAME: VALUE})."""
    path, _, switches = spec.partition(":")
    env = dict(item.split("=", 1) for item in switches.split(",") if item)
    return path, env


def time_build(spec, reps):
    """Runs in the child process: the build's flashrnn is the one imported."""
    build, env = split_build(spec)
    sys.path[:0] = [build, os.path.dirname(os.path.abspath(__file__))]
    import torch
    from bench_kernels import time_ours

    name = os.path.basename(os.path.normpath(build)) + "".join(f" {k}={v}" for k, v in env.items())
    for function, B, N, D, dtype in SHAPES:
        fw, fwbw, _ = time_ours(function, "cuda_fused", B, 1024, N, D, getattr(torch, dtype), reps)
        print(f"{name:>12} {function} {D}x{N} B{B} {dtype}: fw {fw:.3f} fwbw {fwbw:.3f} bw {fwbw - fw:.3f} ms",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=180, help="seconds one build's run may take")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process: one build
    args = ap.parse_args()
    if args.one:
        time_build(args.builds[0], args.reps)
        return
    for _ in range(args.rounds):
        for build in args.builds:
            try:
                done = subprocess.run([sys.executable, __file__, "--one", build, "--reps", str(args.reps)],
                                      timeout=args.timeout, env={**os.environ, **split_build(build)[1]})
                if done.returncode:
                    print(f"{build}: exit status {done.returncode}", flush=True)
            except subprocess.TimeoutExpired:
                print(f"{build}: no result within {args.timeout:.0f} s (a hang?)", flush=True)


if __name__ == "__main__":
    main()
