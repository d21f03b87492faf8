"""Timing harness: CUDA events, warm-up, median of many repetitions over rotating fresh inputs,
and a markdown table stamped with card, driver, CUDA, torch, date and commit."""
from __future__ import annotations

import datetime
import os
import statistics
import subprocess

import torch


def median_ms(fn, input_sets, warmup: int = 3, reps: int = 20) -> float:
    """Median GPU time of fn(*inputs) in ms, measured like triton.testing.do_bench (which the
    anchors used): an event pair around each call, one synchronization at the end, so host-side
    launch overhead overlaps earlier calls as in a training loop. Input sets rotate, so no call
    reuses the previous call's data from L2."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (start, end) in enumerate(events):
        start.record()
        fn(*input_sets[i % len(input_sets)])
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def commit() -> str:
    if os.environ.get("FLASHRNN_COMMIT"):
        return os.environ["FLASHRNN_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp() -> str:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        driver = "?"
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{props.name} ({props.multi_processor_count} SMs), driver {driver}, CUDA {torch.version.cuda}, "
            f"torch {torch.__version__}, {today}, commit {commit()}")


def table(title: str, header: list[str], rows: list[list]) -> str:
    lines = [f"### {title}", "", f"{stamp()}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in row) + " |")
    return "\n".join(lines) + "\n"
