"""A small forward + backward of every cell on both CUDA families (and every dtype), for
compute-sanitizer (memcheck / racecheck / synccheck):
    compute-sanitizer --tool racecheck --kernel-name kns=flashrnn python ci/sanitize_cases.py
Batch 19 and head dim 48 exercise the masked tails (partial batch tile, bucket padding); 48 heads
of dim 16 give 144 CTAs of 8 rows, more than an H100 holds, so the fused kernels take 16-row tiles
(and an odd chunk count in 16-bit); head dim 256 runs the multi-CTA fused kernels: in bf16 on
sm_90 clusters of 8 CTAs exchanging through distributed shared memory, in fp32 32 CTAs per head
exchanging through L2 (and in bf16 too with FLASHRNN_MULTI_L2=1, the last two cases); on sm_90
the L2 variant stages the exchanged rows with multicast bulk copies in clusters of 16 CTAs, and
with FLASHRNN_MULTICAST=0 (the last case) with per-CTA copies as on sm_80/86. Head dim 768 (bf16)
runs the L2 variant's backward with CTAs of dR and db alongside its recurrence (lstm and slstm on
an H100), and with FLASHRNN_WIDE=1 the wide cluster kernels (sm_90: 16 CTAs of 48 units, R partly
in registers, dR and db alongside). Head dim 1024 x 3 heads runs the L2 variant in two waves of
launches (two heads, then one; FLASHRNN_MULTI_BACKWARD=1 so that the backward does too rather than
give way to the alternating kernels). `python ci/sanitize_cases.py 768` runs only the cases of that
head dim."""
import os
import sys

import torch

import flashrnn

# (backend, head dim, heads, FLASHRNN_MULTI_L2, FLASHRNN_MULTICAST, FLASHRNN_WIDE)
CASES = [("cuda_fused", 48, 2, "", "", ""), ("cuda_fused", 16, 48, "", "", ""), ("cuda", 48, 2, "", "", ""),
         ("cuda_fused", 256, 2, "", "", ""), ("cuda_fused", 256, 2, "1", "", ""), ("cuda_fused", 256, 2, "1", "0", ""),
         ("cuda_fused", 768, 1, "", "", ""), ("cuda_fused", 768, 1, "", "", "1"), ("cuda_fused", 1024, 3, "", "", "")]
only = [int(d) for d in sys.argv[1:]]
os.environ["FLASHRNN_MULTI_BACKWARD"] = "1"
for function in flashrnn.CELLS:
    for backend, D, N, multi_l2, multicast, wide in CASES:
        if only and D not in only:
            continue
        os.environ["FLASHRNN_MULTI_L2"] = multi_l2
        os.environ["FLASHRNN_MULTICAST"] = multicast
        os.environ["FLASHRNN_WIDE"] = wide
        for dtype in (torch.bfloat16,) if D >= 768 else (torch.bfloat16, torch.float32):
            spec = flashrnn.CELLS[function]
            g = torch.Generator(device="cpu").manual_seed(0)
            Wx = torch.randn(19, 5, spec.gates_w, N, D, generator=g).to("cuda", dtype).requires_grad_()
            R = (torch.randn(spec.gates_r, N, D, D, generator=g) / D ** 0.5).to("cuda", dtype).requires_grad_()
            b = torch.randn(spec.gates_b, N, D, generator=g).to("cuda", dtype).requires_grad_()
            states, last = flashrnn.flashrnn(Wx, R, b, function=function, backend=backend)
            (states.float().sum() + last.float().sum()).backward()
            torch.cuda.synchronize()
            print(f"{function} {backend} N={N} D={D} {dtype}{' (L2 variant)' if multi_l2 else ''}{' (no multicast)' if multicast else ''}{' (wide)' if wide else ''}: ok", flush=True)
