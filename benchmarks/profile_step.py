"""One fused forward and backward at a benchmark shape, for ncu:
    ncu --clock-control none --kernel-name regex:fused --section WarpStateStats ... \\
        python benchmarks/profile_step.py --function lstm --D 64 --N 12
"""
import argparse

import torch

import flashrnn
from flashrnn._cells import CELLS

ap = argparse.ArgumentParser()
ap.add_argument("--function", default="lstm")
ap.add_argument("--backend", default="cuda_fused")
ap.add_argument("--B", type=int, default=16)
ap.add_argument("--T", type=int, default=256)
ap.add_argument("--N", type=int, default=12)
ap.add_argument("--D", type=int, default=64)
ap.add_argument("--dtype", default="bfloat16")
args = ap.parse_args()
spec = CELLS[args.function]
dt = getattr(torch, args.dtype)
Wx = torch.randn(args.B, args.T, spec.gates_w, args.N, args.D, device="cuda", dtype=dt, requires_grad=True)
R = (torch.randn(spec.gates_r, args.N, args.D, args.D, device="cuda") / args.D ** 0.5).to(dt).requires_grad_()
b = torch.randn(spec.gates_b, args.N, args.D, device="cuda", dtype=dt, requires_grad=True)
states, _ = flashrnn.flashrnn(Wx, R, b, function=args.function, backend=args.backend)
states[0].sum().backward()
torch.cuda.synchronize()
