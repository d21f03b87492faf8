"""Multi-CTA fused kernels (heads above the single-CTA buckets, csrc/kernels/multi) against the
float64 reference on the GPU (marked `gpu`). Same standard as test_gpu.py: relative error of every
output and gradient <= 1e-4 fp32, <= 1e-2 bf16/fp16; outputs NaN-poisoned before each run. Each
case first asserts which kernel family the core picks, so a silent fallback cannot pass as tested.
The family has two variants: clusters with distributed shared memory (sm_90, heads of 2 to 16
CTAs of 32 units whose slice fits) and the L2 exchange (everything else); on an H100 the grid runs
both (D 256/384 in clusters in 16-bit types, the rest through L2), FLASHRNN_MULTI_L2=1 forces the
L2 variant for the cluster shapes, and the kernels that run are checked by name. On sm_90 the L2
variant stages the exchanged rows with multicast bulk copies in clusters of 16 CTAs;
FLASHRNN_MULTICAST=8 / 0 run clusters of 8 / per-CTA copies (sm_80/86's path).
"""
from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

import flashrnn
from flashrnn import _core, _ops
from flashrnn._cells import CELLS

from conftest import float64_reference, run_with_grads
from test_gpu import DTYPES, OPTIONS, check_against_reference, check_fused_repeatable_and_agrees, check_option

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_outputs", "multi_backward_forced")]


@pytest.fixture
def multi_backward_forced(monkeypatch):
    # Where one head's CTAs for one batch group outnumber the SMs or run in waves (plan.h), the L2
    # variant's backward gives way to the alternating kernels by default (faster, core.cpp);
    # FLASHRNN_MULTI_BACKWARD=1 runs it there too, so that this file checks it at those shapes.
    monkeypatch.setenv("FLASHRNN_MULTI_BACKWARD", "1")


def family(function, dtype, B, N, D, backward):
    code, why = _core.require_cuda_core("cuda_fused").fused_family(
        CELLS[function].code, _ops.DTYPE_CODES[dtype], B, N, D, torch.cuda.current_device(), backward)
    return {v: k for k, v in _ops.KERNEL_FAMILIES.items()}[code], why


def assert_multi(function, dtype, B, N, D):
    for backward in (False, True):
        fam, why = family(function, dtype, B, N, D, backward)
        assert fam == "multi", (function, dtype, B, N, D, backward, fam, why)


# (B, T, N, D): every D, N, B and T that issue 4 names appears, on an H100 (132 SMs).
MULTI_GRID = [
    (1, 7, 1, 256), (16, 7, 2, 384), (64, 7, 3, 256), (3, 1, 1, 512), (16, 1024, 1, 768),
    (1, 7, 1, 1024), (16, 7, 1, 2048), (64, 7, 1, 768), (1, 1024, 3, 256), (16, 7, 2, 1024),
    (64, 7, 3, 2048), (64, 1, 2, 1024),  # in waves (test_multi_cta_waves_match_float64)
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", MULTI_GRID, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_multi_cta_matches_float64(shape, function, dtype):
    B, T, N, D = shape
    dt = DTYPES[dtype]
    fams = {family(function, dt, B, N, D, bw)[0] for bw in (False, True)}
    if dt == torch.float32 and fams != {"multi"}:
        pytest.skip(f"fp32 at this shape does not fit the multi-CTA plan ({fams}); the alternating kernels run it")
    assert_multi(function, dt, B, N, D)
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("function", list(CELLS))
def test_multi_cta_options_match_float64(function, option):
    assert_multi(function, torch.float32, 5, 2, 256)
    check_option(function, "cuda_fused", option, 256)


def cuda_kernel_counts(run):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return {e.key: e.count for e in prof.key_averages()}


def cuda_kernel_names(run):
    return " ".join(cuda_kernel_counts(run))


def test_multi_cta_variant_that_runs(monkeypatch):
    inputs, _, _, weights = float64_reference("lstm", 16, 8, 3, 256, torch.bfloat16, "random", 3)
    names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    clusters = torch.cuda.get_device_capability()[0] >= 9
    for kernel in ("forward", "backward"):
        assert (f"cluster_{kernel}_kernel" in names) == clusters, names
        assert (f"multi_{kernel}_kernel" in names) != clusters, names
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    assert "cluster_" not in names and "multi_forward_kernel" in names and "multi_backward_kernel" in names
    monkeypatch.delenv("FLASHRNN_MULTI_L2")
    # 768: 24 CTAs of 32 units, more than a cluster: the L2 variant, or with FLASHRNN_WIDE the wide
    # kernels' 16 CTAs of 48 (cluster_wide_*.cuh) on sm_90
    # (unset: from 3 batch groups of 16 rows on, where they measured faster)
    for B, wide, on in ((16, "", (False, False)), (33, "", (True, True)), (16, "0", (False, False)),
                        (16, "1", (True, True)), (16, "forward", (True, False)), (48, "backward", (False, True))):
        inputs, _, _, weights = float64_reference("lstm", B, 8, 1, 768, torch.bfloat16, "random", 3)
        monkeypatch.setenv("FLASHRNN_WIDE", wide)
        names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
        for kernel, runs in zip(("forward", "backward"), on):
            assert (f"cluster_wide_{kernel}_kernel" in names) == (runs and clusters), (B, wide, names)
            assert (f"multi_{kernel}_kernel" in names) != (runs and clusters), (B, wide, names)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", [(16, 7, 3, 256), (1, 1024, 1, 256), (19, 7, 2, 384)],
                         ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_multi_cta_l2_variant_matches_float64_where_clusters_run(shape, function, dtype, monkeypatch):
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    B, T, N, D = shape
    assert_multi(function, DTYPES[dtype], B, N, D)
    check_against_reference(function, "cuda_fused", DTYPES[dtype], B, T, N, D)


@pytest.mark.parametrize("multicast", ["0", "8"])
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("case", [(64, 7, 1, 768, "float16"), (19, 1024, 1, 512, "bfloat16"), (5, 7, 2, 1024, "float32")],
                         ids=lambda c: "B{}-T{}-N{}-D{}-{}".format(*c))
def test_multi_cta_l2_staging_modes_match_float64(case, function, multicast, monkeypatch):
    # On sm_90 the L2 variant stages rows with multicast bulk copies in clusters of 16 CTAs (what
    # the grid above runs); here in clusters of 8, and with per-CTA copies (what sm_80/86 run).
    # B = 64 at D = 768 stages the backward's dg in chunks: eight of 12 blocks through three buffers
    # with multicast (clusters of 4: the size divides a chunk's blocks), three of 32 without.
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    monkeypatch.setenv("FLASHRNN_MULTICAST", multicast)
    B, T, N, D, dtype = case
    assert_multi(function, DTYPES[dtype], B, N, D)
    check_against_reference(function, "cuda_fused", DTYPES[dtype], B, T, N, D)


@pytest.mark.parametrize("copy", ["0", "1", "2"])
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("case", [(16, 1024, 1, 768, "bfloat16"), (19, 1024, 1, 512, "float16"),
                                  (5, 7, 2, 1024, "float32"), (64, 7, 1, 768, "bfloat16")], ids=lambda c: "B{}-T{}-N{}-D{}-{}".format(*c))
def test_multi_cta_forward_copy_sizes_match_float64(case, function, copy, monkeypatch):
    # The L2 forward's multicast stages h in ranges of blocks per CTA, in copies of
    # FLASHRNN_FORWARD_COPY blocks each as their flags show them (default: the whole range), or
    # after every flag (0). 768 x 1 B = 16: ranges of 6 blocks (copies of 1, 2, 6); 512 x 1 B = 19
    # (two m-tiles) and 1024 x 2: ranges of 4 and 8; B = 64: every warp has pointwise rows.
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    monkeypatch.setenv("FLASHRNN_WIDE", "0")
    monkeypatch.setenv("FLASHRNN_FORWARD_COPY", copy)
    B, T, N, D, dtype = case
    assert_multi(function, DTYPES[dtype], B, N, D)
    check_against_reference(function, "cuda_fused", DTYPES[dtype], B, T, N, D)


# The wide cluster kernels (sm_90, 16-bit): 48 units per CTA, R partly in registers. 768 x 1 with a
# partial second batch group; 576 x 2 (12 CTAs, two heads); 528 (11 CTAs, an odd k-step count
# forward: the k-groups take 17 and 16); T = 1. Against float64, and bitwise against themselves.
# dR and db: CTAs alongside the wide backward where clusters fit beside it (on a 132-SM card every
# case here), or weight_grad_kernel after it (FLASHRNN_DR_ALONGSIDE=0).
WIDE_CASES = [(19, 33, 1, 768), (5, 9, 2, 576), (3, 1, 1, 528), (1, 20, 1, 768)]


@pytest.mark.parametrize("alongside", ["1", "0"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", WIDE_CASES, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_multi_cta_cluster_wide_kernels_match_float64(shape, function, dtype, alongside, monkeypatch):
    monkeypatch.setenv("FLASHRNN_WIDE", "1")
    monkeypatch.setenv("FLASHRNN_DR_ALONGSIDE", alongside)
    B, T, N, D = shape
    dt = DTYPES[dtype]
    assert_multi(function, dt, B, N, D)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("clusters need sm_90")
    inputs, _, _, weights = float64_reference(function, B, T, N, D, dt, "random", 13)
    names = cuda_kernel_names(lambda: run_with_grads(function, "cuda_fused", inputs, weights))
    assert "cluster_wide_forward_kernel" in names and "cluster_wide_backward_kernel" in names, names
    assert "multi_forward_kernel" not in names and "multi_backward_kernel" not in names, names
    if alongside == "0" or torch.cuda.get_device_properties(0).multi_processor_count == 132:
        assert ("weight_grad_kernel" in names) == (alongside == "0"), names
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)
    first = run_with_grads(function, "cuda_fused", inputs, weights)
    again = run_with_grads(function, "cuda_fused", inputs, weights)
    for a, b in zip([first[0], *first[2]], [again[0], *again[2]]):
        assert (a is None and b is None) or torch.equal(a, b), "results differ between two runs"
    with torch.no_grad():  # inference: nothing saved for a backward, the same states
        states, _ = flashrnn.flashrnn(*inputs, config=flashrnn.FlashRNNConfig(function=function, backend="cuda_fused"))
    assert torch.equal(states, first[0])


def backward_launch(function, dtype, B, T, N, D):
    return _core.require_cuda_core("cuda_fused").multi_backward_launch(
        CELLS[function].code, _ops.DTYPE_CODES[dtype], torch.cuda.current_device(), B, T, N, D)


def alongside_ctas(function, dtype, B, T, N, D):
    return backward_launch(function, dtype, B, T, N, D)["alongside_ctas"]


# dR and db alongside the L2 variant's backward (kernels/weight_grad/alongside.cuh): steps in blocks
# of 1024 // B, so T = 130 at B = 16 makes three blocks (the last one partial), T = 450 at B = 5 too.
ALONGSIDE_CASES = [(16, 130, 1, 768), (5, 450, 2, 512), (64, 40, 1, 768)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("shape", ALONGSIDE_CASES, ids=lambda s: "B{}-T{}-N{}-D{}".format(*s))
def test_multi_cta_weight_grads_alongside_match_float64(shape, function, dtype, monkeypatch):
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")  # (768 runs the wide cluster kernels on sm_90)
    B, T, N, D = shape
    dt = DTYPES[dtype]
    assert_multi(function, dt, B, N, D)
    if alongside_ctas(function, dt, B, T, N, D) == 0:
        pytest.skip("no SM left beside the recurrence on this device")
    inputs, _, _, weights = float64_reference(function, B, T, N, D, dt, "random", 5)
    names = cuda_kernel_names(lambda: run_with_grads(function, "cuda_fused", inputs, weights))
    assert "multi_backward_kernel" in names and "weight_grad_kernel" not in names, names
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)
    first = run_with_grads(function, "cuda_fused", inputs, weights)
    again = run_with_grads(function, "cuda_fused", inputs, weights)
    for a, b in zip(first[2], again[2]):
        assert torch.equal(a, b), "gradients differ between two runs"
    monkeypatch.setenv("FLASHRNN_DR_ALONGSIDE", "0")  # weight_grad_kernel after the recurrence instead
    assert alongside_ctas(function, dt, B, T, N, D) == 0
    names = cuda_kernel_names(lambda: run_with_grads(function, "cuda_fused", inputs, weights))
    assert "weight_grad_kernel" in names, names
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)


def test_multi_cta_alongside_ctas_where_they_run():
    # fp32 keeps weight_grad_kernel (3xTF32); 2048 x 1 fills the device with the recurrence. On an
    # H100 (132 SMs) 768 x 1 leaves 36 SMs: clusters of 8 so that at least 24 of them compute dR.
    assert alongside_ctas("lstm", torch.float32, 16, 64, 1, 768) == 0
    assert alongside_ctas("lstm", torch.bfloat16, 16, 64, 1, 2048) == 0
    assert alongside_ctas("lstm", torch.float16, 16, 0, 1, 768) == 0
    if torch.cuda.get_device_properties(0).multi_processor_count == 132:
        for B in (16, 64):
            assert alongside_ctas("lstm", torch.float16, B, 1024, 1, 768) >= 24


# The backward's producer warp (sm_90, multicast): where a step's dg does not fit one buffer and
# every CTA has an SM to itself. 768 x 1: LSTM / sLSTM from B = 17 (padded to 32 rows: four
# chunks; B = 64 eight), GRU from B = 33 (six chunks); Elman's dg fits one buffer. The same
# products in the same order as without it: bitwise equal states, dWx (= dg) and dstates, the
# recurrence's outputs (dR and db also depend on where they are computed: CTAs alongside or after).
@pytest.mark.parametrize("function, B", [("lstm", 64), ("lstm", 19), ("slstm", 64), ("slstm", 19), ("gru", 40)])
def test_multi_cta_producer_warp_matches_float64_and_the_warps_without_it(function, B, monkeypatch):
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")  # (768 runs the wide cluster kernels on sm_90)
    T, N, D, dt = 9, 1, 768, torch.bfloat16
    assert_multi(function, dt, B, N, D)
    if not backward_launch(function, dt, B, T, N, D)["producer"]:
        assert torch.cuda.get_device_capability()[0] < 9 or os.environ.get("FLASHRNN_MULTICAST") == "0"
        pytest.skip("no multicast staging on this device: no producer warp")
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)
    inputs, _, _, weights = float64_reference(function, B, T, N, D, dt, "random", 7)
    first = run_with_grads(function, "cuda_fused", inputs, weights)
    monkeypatch.setenv("FLASHRNN_PRODUCER", "0")
    assert not backward_launch(function, dt, B, T, N, D)["producer"]
    second = run_with_grads(function, "cuda_fused", inputs, weights)
    for a, b in zip([first[0], first[2][0], first[2][3]], [second[0], second[2][0], second[2][3]]):
        assert (a is None and b is None) or torch.equal(a, b), "results differ with and without the producer warp"


@pytest.mark.parametrize("function", list(CELLS))
def device_plan(function, dtype, B, N, D, backward):
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    ring = props.major >= 9 and os.environ.get("FLASHRNN_MULTICAST") != "0"
    return _core._C.multi_plan(
        backward, CELLS[function].gates_r, 4 if dtype == torch.float32 else 2, B, N, D,
        props.shared_memory_per_block_optin, props.shared_memory_per_multiprocessor, props.multi_processor_count, ring)


# Heads and batch groups in waves (plan.h): shapes whose CTAs do not all fit the device at once run
# as launches one after another, each over the (head, batch group) pairs that fit. On an H100:
# 2048 x 1 B = 64 one batch group per wave (4 waves); 1024 x 3 B = 16 two heads, then one; 512 x 12
# B = 2 four heads per wave; 1536 x 2 B = 64 the forward at 16 rows per CTA (32 do not fit two per
# SM); 512 x 3 B = 33 in fp32. The L2 variant is forced (512's forward would run in clusters).
WAVE_CASES = [(64, 7, 1, 2048, "bfloat16"), (16, 7, 3, 1024, "float16"), (2, 7, 12, 512, "bfloat16"),
              (64, 5, 2, 1536, "bfloat16"), (33, 7, 3, 512, "float32")]


@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("case", WAVE_CASES, ids=lambda c: "B{}-T{}-N{}-D{}-{}".format(*c))
def test_multi_cta_waves_match_float64(case, function, monkeypatch):
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    B, T, N, D, dtype = case
    dt = DTYPES[dtype]
    assert_multi(function, dt, B, N, D)
    waves = [device_plan(function, dt, B, N, D, backward)["waves"] for backward in (False, True)]
    if torch.cuda.get_device_properties(0).multi_processor_count == 132:
        assert min(waves) > 1, waves
    inputs, _, _, weights = float64_reference(function, B, T, N, D, dt, "random", 17)
    counts = cuda_kernel_counts(lambda: run_with_grads(function, "cuda_fused", inputs, weights))
    launched = [sum(c for k, c in counts.items() if f"multi_{kernel}_kernel" in k) for kernel in ("forward", "backward")]
    assert launched == waves, (launched, waves, counts)
    check_against_reference(function, "cuda_fused", dt, B, T, N, D)
    first = run_with_grads(function, "cuda_fused", inputs, weights)
    again = run_with_grads(function, "cuda_fused", inputs, weights)
    for a, b in zip([first[0], *first[2]], [again[0], *again[2]]):
        assert (a is None and b is None) or torch.equal(a, b), "results differ between two runs"


@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("case", [(16, 33, 1, 768, "bfloat16"), (5, 7, 2, 1024, "float16"), (20, 9, 1, 512, "bfloat16")],
                         ids=lambda c: "B{}-T{}-N{}-D{}-{}".format(*c))
def test_multi_cta_tagged_exchange_matches_the_flags_bitwise(case, function, monkeypatch):
    # On sm_90 the L2 variant's 16-bit forward exchanges h in tagged words (each word of h beside
    # the step that wrote it, polled directly; cooperative.cuh) up to 768 units as a rule, with
    # FLASHRNN_TAGGED=1 wherever it can (1024 here), FLASHRNN_TAGGED=0 with progress flags. The same
    # products in the same order: the same bits, outputs and gradients. B = 5 and 20 leave rows of
    # the batch tile (16 and 32 rows) that are never written (their tags stay 0).
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the tagged exchange needs clusters (sm_90)")
    check_switch_keeps_the_bits(function, case, "FLASHRNN_TAGGED", r"multi_forward_kernel<[^>]*, (true|false)>", 23,
                                monkeypatch)


def check_switch_keeps_the_bits(function, case, switch, kernel, seed, monkeypatch):
    # Runs the L2 variant on `case` with the environment switch at 1 and at 0: the kernel's template
    # argument that `kernel` (a regex) captures must follow it, the outputs and gradients must not.
    monkeypatch.setenv("FLASHRNN_MULTI_L2", "1")
    monkeypatch.setenv("FLASHRNN_WIDE", "0")
    B, T, N, D, dtype = case
    assert_multi(function, DTYPES[dtype], B, N, D)
    inputs, _, _, weights = float64_reference(function, B, T, N, D, DTYPES[dtype], "random", seed)
    results = {}
    for on in ("1", "0"):
        monkeypatch.setenv(switch, on)
        names = cuda_kernel_names(lambda: results.setdefault(on, run_with_grads(function, "cuda_fused", inputs, weights)))
        assert set(re.findall(kernel, names)) == {"true" if on == "1" else "false"}, (switch, on, names)
    (out1, last1, grads1), (out0, last0, grads0) = results["1"], results["0"]
    for a, b in zip([out1, last1, *grads1], [out0, last0, *grads0]):
        assert (a is None and b is None) or torch.equal(a, b), f"{switch} changed the results"


@pytest.mark.parametrize("function", list(CELLS))
@pytest.mark.parametrize("case", [(16, 33, 1, 768, "bfloat16"), (13, 9, 1, 1024, "float16"), (16, 9, 1, 512, "float32")],
                         ids=lambda c: "B{}-T{}-N{}-D{}-{}".format(*c))
def test_multi_cta_backward_r_in_registers_matches_shared_memory_bitwise(case, function, monkeypatch):
    # With FLASHRNN_BACKWARD_REGISTERS=1, where a CTA has an SM to itself and the step's dg is one
    # chunk, the L2 variant's backward keeps its warps' first k-steps of R in registers (plan.h
    # backward_register_steps: all of 768 x 1, 192 of 1024 x 1's 256); without it (the default
    # until measured) in shared memory. The same products summed in the same order: the same bits.
    check_switch_keeps_the_bits(function, case, "FLASHRNN_BACKWARD_REGISTERS",
                                r"multi_backward_kernel<[^>]*, false, (true|false)>", 31, monkeypatch)
    monkeypatch.setenv("FLASHRNN_BACKWARD_REGISTERS", "1")
    B, T, N, D, dtype = case
    check_against_reference(function, "cuda_fused", DTYPES[dtype], B, T, N, D)


def test_multi_cta_wide_kernels_run_heads_the_l2_variant_runs_in_waves(monkeypatch):
    # 768 x 3 at B = 16: three wide clusters at once, where the L2 variant needs two waves (288 CTAs)
    monkeypatch.delenv("FLASHRNN_WIDE", raising=False)
    monkeypatch.delenv("FLASHRNN_MULTI_L2", raising=False)
    B, T, N, D = 16, 9, 3, 768
    assert_multi("lstm", torch.bfloat16, B, N, D)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("clusters need sm_90")
    assert device_plan("lstm", torch.bfloat16, B, N, D, False)["waves"] > 1
    inputs, _, _, weights = float64_reference("lstm", B, T, N, D, torch.bfloat16, "random", 19)
    names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    assert "cluster_wide_forward_kernel" in names and "cluster_wide_backward_kernel" in names, names
    check_against_reference("lstm", "cuda_fused", torch.bfloat16, B, T, N, D)
    monkeypatch.setenv("FLASHRNN_WIDE", "0")  # the L2 variant in waves
    names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    assert "cluster_wide" not in names and "multi_forward_kernel" in names, names
    check_against_reference("lstm", "cuda_fused", torch.bfloat16, B, T, N, D)


@pytest.mark.parametrize("B", [64, 16])
def test_multi_cta_backward_runs_the_alternating_kernels_where_l2_ctas_share_sms(B, monkeypatch):
    # 2048 x 1: 256 CTAs per head and batch group, two per SM on a 132-SM card; at B = 64 four waves. The
    # forward runs the L2 variant, the backward the alternating kernels, chosen as faster and so
    # without a warning (core.cpp fused_family); FLASHRNN_MULTI_BACKWARD=1 the L2 variant again.
    monkeypatch.delenv("FLASHRNN_MULTI_BACKWARD")
    T, N, D, dt = 5, 1, 2048, torch.bfloat16
    plan = device_plan("lstm", dt, B, N, D, True)
    if plan["waves"] == 1 and plan["slices"] <= torch.cuda.get_device_properties(0).multi_processor_count:
        pytest.skip("one head's CTAs have an SM each on this GPU")
    assert family("lstm", dt, B, N, D, False) == ("multi", "")
    assert family("lstm", dt, B, N, D, True) == ("alternating", "")
    inputs, _, _, weights = float64_reference("lstm", B, T, N, D, dt, "random", 23)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    assert "multi_forward_kernel" in names and "multi_backward_kernel" not in names, names
    check_against_reference("lstm", "cuda_fused", dt, B, T, N, D)
    monkeypatch.setenv("FLASHRNN_MULTI_BACKWARD", "1")
    assert family("lstm", dt, B, N, D, True) == ("multi", "")


def test_multi_cta_wide_backward_where_the_l2_ctas_share_sms(monkeypatch):
    # 768 x 2 at B = 16: two clusters, below the wide kernels' default of three, but the L2
    # variant's 192 CTAs outnumber a 132-SM card's SMs: the backward runs the wide kernels, the
    # forward the L2 variant (cluster_launch.h wide_allowed, where each measured faster).
    monkeypatch.delenv("FLASHRNN_WIDE", raising=False)
    B, T, N, D, dt = 16, 9, 2, 768, torch.bfloat16
    assert_multi("lstm", dt, B, N, D)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("clusters need sm_90")
    if device_plan("lstm", dt, B, N, D, True)["ctas"] <= torch.cuda.get_device_properties(0).multi_processor_count:
        pytest.skip("every L2 CTA has an SM of its own on this GPU")
    inputs, _, _, weights = float64_reference("lstm", B, T, N, D, dt, "random", 29)
    names = cuda_kernel_names(lambda: run_with_grads("lstm", "cuda_fused", inputs, weights))
    assert "multi_forward_kernel" in names and "cluster_wide_forward_kernel" not in names, names
    assert "cluster_wide_backward_kernel" in names and "multi_backward_kernel" not in names, names
    check_against_reference("lstm", "cuda_fused", dt, B, T, N, D)


@pytest.mark.parametrize("function", list(CELLS))
def test_multi_cta_zero_initial_states(function):
    assert_multi(function, torch.bfloat16, 4, 1, 256)
    check_against_reference(function, "cuda_fused", torch.bfloat16, 4, 20, 1, 256, states="none")
    check_against_reference(function, "cuda_fused", torch.float32, 4, 20, 1, 256, states="zeros")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("function", list(CELLS))
def test_multi_cta_agrees_with_alternating_and_is_deterministic(function, dtype):
    assert_multi(function, DTYPES[dtype], 19, 1, 384)
    check_fused_repeatable_and_agrees(function, DTYPES[dtype], 1, 384)


def test_multi_cta_cuda_graph_capture_and_replay():
    assert_multi("lstm", torch.bfloat16, 8, 1, 512)
    inputs, _, _, weights = float64_reference("lstm", 8, 16, 1, 512, torch.bfloat16, "random", 11)
    static = [x.detach().clone() for x in inputs]
    expected = run_with_grads("lstm", "cuda_fused", static, weights)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_with_grads("lstm", "cuda_fused", static, weights)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run_with_grads("lstm", "cuda_fused", static, weights)
    for _ in range(2):
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip([captured[0], *captured[2]], [expected[0], *expected[2]]):
        assert torch.equal(a, b)
