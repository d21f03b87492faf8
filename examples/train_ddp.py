"""A small multi-head sLSTM language model on synthetic data, trained with DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py            # train a few steps
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --check    # DDP grads == 1-GPU grads
    torchrun --standalone --nproc_per_node=2 examples/train_ddp.py --benchmark  # tokens/s
    python examples/train_ddp.py --benchmark                                  # one GPU

--check: every rank draws the same global batch and takes its slice; after one DDP backward,
rank 0 recomputes the gradients of an identical single-GPU model on the whole batch and prints
the largest relative difference over the parameters (exit code 1 above --tol). NCCL runs with
the environment as given (NVLink multicast stays off where the machine turns it off).
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import flashrnn


class RecurrentBlock(nn.Module):
    """x + out(h), h from a multi-head recurrence over W x (pre-norm residual block)."""

    def __init__(self, hidden: int, heads: int, function: str, backend: str):
        super().__init__()
        spec = flashrnn.CELLS[function]
        self.function, self.backend, self.heads, self.head_dim = function, backend, heads, hidden // heads
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, spec.gates_w * hidden)
        self.R = nn.Parameter(torch.randn(spec.gates_r, heads, self.head_dim, self.head_dim) / self.head_dim ** 0.5)
        self.b = nn.Parameter(torch.zeros(spec.gates_b, heads, self.head_dim))
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x):
        B, T, H = x.shape
        Wx = self.proj(self.norm(x)).view(B, T, -1, self.heads, self.head_dim)
        states, _ = flashrnn.flashrnn(Wx, self.R, self.b, function=self.function, backend=self.backend)
        return x + self.out(states[0].reshape(B, T, H).to(x.dtype))


class LanguageModel(nn.Module):
    def __init__(self, vocab: int, hidden: int, heads: int, layers: int, function: str, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(RecurrentBlock(hidden, heads, function, backend) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def batch(global_batch: int, seq: int, vocab: int, step: int, device) -> torch.Tensor:
    """Synthetic tokens with structure (a noisy repeating pattern), identical on every rank."""
    g = torch.Generator().manual_seed(1000 + step)
    base = torch.randint(0, vocab, (global_batch, 1), generator=g)
    t = torch.arange(seq + 1)
    noise = torch.randint(0, 4, (global_batch, seq + 1), generator=g)
    return ((base + 7 * t + noise) % vocab).to(device)


def loss_of(model, tokens, dtype):
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--function", default="slstm", choices=list(flashrnn.CELLS))
    ap.add_argument("--backend", default="cuda_fused")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch", type=int, default=32, help="global batch (split over ranks)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--benchmark", action="store_true")
    ap.add_argument("--tol", type=float, default=None)
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    assert args.batch % world == 0, "--batch must be divisible by the number of ranks"
    local = args.batch // world

    torch.manual_seed(0)
    model = LanguageModel(args.vocab, args.hidden, args.heads, args.layers, args.function, args.backend).to(device)
    reference = copy.deepcopy(model) if args.check and rank == 0 else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index]) if distributed else model

    if args.check:
        tokens = batch(args.batch, args.seq, args.vocab, 0, device)
        loss_of(ddp, tokens[rank * local:(rank + 1) * local], dtype).backward()
        if rank == 0:
            loss_of(reference, tokens, dtype).backward()
            worst = 0.0
            for (name, p), q in zip(model.named_parameters(), reference.parameters()):
                err = ((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-30)).item()
                worst = max(worst, err)
            tol = args.tol if args.tol is not None else (1e-5 if dtype == torch.float32 else 1e-2)
            print(f"check: {world} GPUs vs 1 GPU, {args.dtype}: largest relative gradient difference {worst:.3e} "
                  f"(tolerance {tol:g}) -> {'ok' if worst <= tol else 'FAILED'}", flush=True)
            code = 0 if worst <= tol else 1
        else:
            code = 0
        if distributed:
            flag = torch.tensor([code], device=device)
            dist.all_reduce(flag)
            code = int(flag.item() > 0)
            dist.destroy_process_group()
        raise SystemExit(code)

    optimizer = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    warmup = 3 if args.benchmark else 0
    start = None
    for step in range(args.steps + warmup):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        tokens = batch(args.batch, args.seq, args.vocab, step, device)[rank * local:(rank + 1) * local]
        loss = loss_of(ddp, tokens, dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if rank == 0 and not args.benchmark and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}", flush=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if rank == 0:
        tokens_per_s = args.steps * args.batch * args.seq / elapsed
        print(f"{world} GPU(s), {torch.cuda.get_device_name(device)}, {args.function} {args.backend} {args.dtype}, "
              f"global batch {args.batch} x {args.seq}, hidden {args.hidden} ({args.heads} heads), {args.layers} layers: "
              f"{tokens_per_s:,.0f} tokens/s", flush=True)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
