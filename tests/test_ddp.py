"""flashrnn inside DistributedDataParallel on 2 GPUs (issue 7): one DDP step's gradients equal a
single GPU's gradients on the concatenated batch. Needs 2 GPUs (skipped otherwise)."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]
EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "train_ddp.py"


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_ddp_gradients_equal_single_gpu_gradients(dtype, tol):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE),
           "--check", "--dtype", dtype, "--tol", str(tol), "--seq", "64", "--batch", "8"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    out = result.stdout + result.stderr
    match = re.search(r"largest relative gradient difference ([0-9.e+-]+)", out)
    assert match, out[-3000:]
    assert float(match.group(1)) <= tol, out[-3000:]
    assert result.returncode == 0, out[-3000:]


def test_ops_run_on_the_device_of_their_inputs():
    import flashrnn
    from conftest import random_problem, rel_err

    Wx, R, b, s0 = random_problem("lstm", 3, 9, 2, 32, dtype=torch.float32, device="cuda:1", seed=3)
    torch.cuda.set_device(0)
    for backend in ("cuda", "cuda_fused"):
        out, _ = flashrnn.flashrnn(Wx, R, b, s0, backend=backend)
        assert out.device == torch.device("cuda:1")
        assert torch.cuda.current_device() == 0  # the call did not move the current device
        ref, _ = flashrnn.flashrnn(*(x.cpu().double() for x in (Wx, R, b, s0)), backend="vanilla")
        assert rel_err(out.cpu(), ref) <= 1e-4
