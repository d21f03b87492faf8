"""The multi-CTA kernels' plan (csrc/kernels/multi/plan.h), checked without a GPU: it is pure
arithmetic on the device's limits, exposed as flashrnn._C.multi_plan. For the limits of the GPUs
we target, every accepted plan must fit the device (all CTAs of a launch resident at once, shared
memory per CTA and per SM), cover the batch and the heads exactly (in waves of launches where they
do not fit at once), and fit the workspace sizes the ops allocate; and the head-dim limits the
docs state must follow from it."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from flashrnn import _core
from flashrnn._cells import CELLS
from flashrnn._ops import DTYPE_CODES, KERNEL_FAMILIES

pytestmark = pytest.mark.skipif(not _core.has_cuda_core(), reason="needs the compiled CUDA core (no GPU needed)")

# (opt-in shared memory per block, shared memory per SM, SMs), from the CUDA programming guide's
# compute-capability tables and cudaGetDeviceProperties on the H100 we measure on.
DEVICES = {
    "H100 SXM (sm_90)": (232448, 233472, 132),
    "A100 SXM (sm_80)": (166912, 167936, 108),
    "RTX A6000 (sm_86)": (101376, 102400, 84),
}
ESIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
RESERVE, PER_CTA, OPERAND_BUDGET, MAX_PER_SM = 2048, 1024, 100 * 1024, 2


def plan(backward, function, dtype, B, N, D, device, ring=None, tagged=False):
    # the backward stages through a ring of buffers where it multicasts (sm_90), as the launcher plans it
    ring = "sm_90" in device if ring is None else ring
    return _core._C.multi_plan(backward, CELLS[function].gates_r, ESIZE[dtype], B, N, D, *DEVICES[device], ring, tagged)


def test_tagged_forward_plan_doubles_the_stage_and_only_in_16_bit():
    # The 16-bit forward's tagged exchange (multi_forward.cuh) carries each 32-bit word of h in 8
    # bytes: its stage rows are twice as long, the rest of the layout follows; its workspace holds
    # the tagged exchange. fp32 and the backward ignore the request. 768 x 1 at B = 16 on the H100
    # keeps every k-step of R in registers and one wave either way.
    for function, B, D in itertools.product(CELLS, (1, 16, 20, 64), (512, 768, 1024)):
        flags = plan(False, function, "bfloat16", B, 1, D, "H100 SXM (sm_90)")
        tagged = plan(False, function, "bfloat16", B, 1, D, "H100 SXM (sm_90)", tagged=True)
        where = (function, B, D)
        assert tagged["tagged"] and not flags["tagged"], where
        assert tagged["a_row"] == 2 * flags["a_row"] == 4 * D, where
        assert tagged["red_offset"] == 16 * tagged["mt"] * tagged["a_row"], where
        assert tagged["exchange_words"] >= 2 * tagged["groups"] * 16 * tagged["mt"] * D, where  # 8 bytes a pair
        for other in (plan(False, function, "float32", B, 1, D, "H100 SXM (sm_90)", tagged=True),
                      plan(True, function, "bfloat16", B, 1, D, "H100 SXM (sm_90)", tagged=True)):
            assert "why" in other or not other["tagged"], where
    flags = plan(False, "lstm", "bfloat16", 16, 1, 768, "H100 SXM (sm_90)")
    tagged = plan(False, "lstm", "bfloat16", 16, 1, 768, "H100 SXM (sm_90)", tagged=True)
    assert tagged["waves"] == flags["waves"] == 1 and tagged["reg_ksteps"] == flags["reg_ksteps"] == 48


@pytest.mark.parametrize("device", list(DEVICES))
def test_every_accepted_plan_fits_the_device_and_covers_the_problem(device):
    smem_block, smem_sm, sms = DEVICES[device]
    accepted = waves = 0
    for function, dtype, backward, B, N, D in itertools.product(
            CELLS, ESIZE, (False, True), (1, 3, 16, 17, 64, 256), (1, 2, 3, 12), range(256, 4097, 128)):
        p = plan(backward, function, dtype, B, N, D, device)
        if "why" in p:
            continue
        accepted += 1
        where = (function, dtype, backward, B, N, D)
        rows = 16 * p["mt"]
        assert p["mt"] in (1, 2, 4), where
        assert p["slices"] * 8 == D and p["heads"] == N, where
        assert p["groups"] * rows >= B > (p["groups"] - 1) * rows, where
        # a launch (wave) runs a rectangle of batch groups x heads: several heads only with all
        # their groups; the waves tile every (head, batch group) once
        assert 1 <= p["wave_groups"] <= p["groups"] and 1 <= p["wave_heads"] <= N, where
        assert p["wave_heads"] == 1 or p["wave_groups"] == p["groups"], where
        assert p["waves"] == math.ceil(p["groups"] / p["wave_groups"]) * math.ceil(N / p["wave_heads"]), where
        assert p["ctas"] == p["slices"] * p["wave_groups"] * p["wave_heads"], where
        per_sm = math.ceil(p["ctas"] / sms)
        assert per_sm <= MAX_PER_SM, where
        assert p["smem"] <= smem_block - RESERVE, where
        assert per_sm * (p["smem"] + PER_CTA) <= smem_sm, where
        gates_r, k = CELLS[function].gates_r, 8 if dtype == "float32" else 16
        ksteps = (gates_r if backward else 1) * D // k
        # the first k-steps of R in registers (8 // mt k-groups; forward 6 per warp in 16-bit, 2 in
        # fp32; backward 24 and 8, only where a CTA has an SM to itself and the step is one chunk),
        # then in shared memory
        if backward:
            per_warp = (8 if dtype == "float32" else 24) if per_sm == 1 and p["chunks"] == 1 else 0
        else:
            per_warp = 2 if dtype == "float32" else 6
        assert p["reg_ksteps"] == min(per_warp * (8 // p["mt"]), ksteps), where
        assert 0 <= p["resident"] <= ksteps - p["reg_ksteps"], where
        tiles = 1 if backward else gates_r
        assert p["smem"] == p["r_offset"] + p["resident"] * tiles * 256, where
        # staging: the step's K columns (forward D, backward Gr * D) in whole chunks of k-steps;
        # the backward's of whole blocks (a slice's Gr x 8 columns); the buffers precede the reduction
        # buffer, and take more than the base budget only where all of R stays in shared memory
        assert p["chunk_k"] * p["chunks"] == (gates_r if backward else 1) * D and p["chunk_k"] % k == 0, where
        assert not backward or p["chunk_k"] % (gates_r * 8) == 0, where
        assert 1 <= p["slots"] <= (3 if backward and "sm_90" in device else 1) and p["a_row"] >= p["chunk_k"] * ESIZE[dtype], where
        assert p["red_offset"] == p["slots"] * rows * p["a_row"], where
        assert p["red_offset"] <= OPERAND_BUDGET or p["resident"] == ksteps - p["reg_ksteps"], where
        # the ops' workspaces (exchange words, one flag per CTA of every wave) hold the plan's padding
        assert p["exchange_words"] >= 2 * N * p["groups"] * rows * D * ESIZE[dtype] // 4, where
        # (one 128-byte line per flag: pollers and writers of different CTAs never share one)
        assert p["flag_spacing"] * 4 >= 128 and p["flag_words"] >= N * p["groups"] * p["slices"] * p["flag_spacing"], where
        assert p["dg_exchange_words"] >= 2 * N * p["groups"] * rows * gates_r * D * ESIZE[dtype] // 4 + 4, where
        waves += p["waves"] > 1
    assert accepted > 500 and waves > 100


def test_h100_head_dim_limits_stated_in_the_docs():
    # README and `python -m flashrnn info`: on an H100 the largest head dim that runs fused forward
    # and backward is 2112 in bf16/fp16 for every cell, 1408 in fp32 for LSTM, GRU and sLSTM, 1536
    # for Elman; at every batch size and head count (in waves where they do not fit at once), and
    # every multiple of 16 up to it runs.
    expected = {("bfloat16", f): 2112 for f in CELLS} | {("float16", f): 2112 for f in CELLS}
    expected |= {("float32", "lstm"): 1408, ("float32", "gru"): 1408, ("float32", "slstm"): 1408,
                 ("float32", "elman"): 1536}
    for (dtype, function), limit in expected.items():
        fits = [D for D in range(256, 8193, 64)
                if all("why" not in plan(bw, function, dtype, 16, 1, D, "H100 SXM (sm_90)") for bw in (False, True))]
        assert max(fits) == limit, (dtype, function, max(fits))


# README: the largest LSTM head dim (16-bit, fp32) that runs fused on each device, by the plan
LSTM_LIMITS = {"H100 SXM (sm_90)": (2112, 1408), "A100 SXM (sm_80)": (1728, 896), "RTX A6000 (sm_86)": (832, 640)}


@pytest.mark.parametrize("device", list(DEVICES))
def test_every_head_dim_up_to_the_limit_runs_at_any_batch_and_heads(device):
    # heads and batch groups that do not fit at once run in waves: the limit is one head's
    for function, dtype in itertools.product(CELLS, ESIZE):
        limit = max(D for D in range(256, 8193, 64)
                    if all("why" not in plan(bw, function, dtype, 16, 1, D, device) for bw in (False, True)))
        if function == "lstm":
            assert limit == LSTM_LIMITS[device][dtype == "float32"], (device, dtype, limit)
        for B, N, D in itertools.product((1, 17, 64, 256), (1, 2, 3, 12), range(256, limit + 1, 16)):
            for backward in (False, True):
                assert "why" not in plan(backward, function, dtype, B, N, D, device), (function, dtype, B, N, D, backward)


def test_waves_where_the_ctas_do_not_fit_at_once():
    h100 = "H100 SXM (sm_90)"
    # 2048 x 1 at B = 64: 256 CTAs (two per SM) per batch group of 16 rows, one group per wave
    p = plan(False, "lstm", "bfloat16", 64, 1, 2048, h100)
    assert (p["mt"], p["groups"], p["wave_groups"], p["wave_heads"], p["waves"]) == (1, 4, 1, 1, 4), p
    # 512 x 12 at B = 2: 64 CTAs per head, four heads per wave
    p = plan(True, "gru", "bfloat16", 2, 12, 512, h100)
    assert (p["groups"], p["wave_groups"], p["wave_heads"], p["waves"], p["ctas"]) == (1, 1, 4, 3, 256), p
    # 1024 x 3 at B = 64: two batch groups of 32 rows per wave, one head
    p = plan(True, "lstm", "float16", 64, 3, 1024, h100)
    assert (p["mt"], p["groups"], p["wave_groups"], p["wave_heads"], p["waves"]) == (2, 2, 2, 1, 3), p
    # 1536 forward at B = 64: 32 rows of h (98 KB) beside the reduction buffer do not fit two CTAs
    # per SM, and 192 CTAs need two per SM: 16 rows per CTA instead, in four waves
    p = plan(False, "lstm", "bfloat16", 64, 1, 1536, h100)
    assert (p["mt"], p["groups"], p["wave_groups"], p["waves"]) == (1, 4, 1, 4), p
    # shapes that fit at once keep one launch
    for B, N, D in [(16, 1, 768), (64, 1, 768), (16, 3, 256), (16, 1, 2112)]:
        assert plan(False, "lstm", "bfloat16", B, N, D, h100)["waves"] == 1, (B, N, D)


def test_the_issue_shapes_run_multi_cta_on_an_h100():
    for function, dtype in itertools.product(CELLS, ("bfloat16", "float16")):
        for B, N, D in [(16, 1, 768), (16, 3, 256), (64, 1, 768), (16, 1, 2048), (1, 3, 512)]:
            for backward in (False, True):
                p = plan(backward, function, dtype, B, N, D, "H100 SXM (sm_90)")
                assert "why" not in p, (function, dtype, B, N, D, backward, p)


def test_backward_stages_chunks_in_a_ring_on_an_h100():
    # multi_backward.cuh multiplies one chunk of dg_{t+1} while the next ones land where a step does
    # not fit at once, in chunks of whole blocks (a CTA's Gr x 8 columns): at B = 64 a step (393 KB
    # in 16-bit types) goes through three buffers of 12 blocks, with all of R^T's slice beside
    # them; at B = 16 the whole step is one chunk
    h100 = "H100 SXM (sm_90)"
    for dtype in ("bfloat16", "float16"):
        for function in ("lstm", "gru"):
            p = plan(True, function, dtype, 16, 1, 768, h100)
            assert (p["slots"], p["chunks"]) == (1, 1), p
        p = plan(True, "lstm", dtype, 64, 1, 768, h100)
        assert (p["slots"], p["chunks"], p["chunk_k"]) == (3, 8, 384) and p["resident"] == 4 * 768 // 16, p
    # without multicast (each CTA copies every row: bound by L2 bandwidth) one buffer of the most
    # blocks that fit
    p = plan(True, "lstm", "bfloat16", 64, 1, 768, h100, ring=False)
    assert (p["slots"], p["chunks"], p["chunk_k"]) == (1, 3, 1024), p
    p = plan(True, "lstm", "float32", 16, 1, 768, h100)  # 16 rows of 16 blocks: 32 KB in fp32
    assert (p["slots"], p["chunks"], p["chunk_k"]) == (3, 6, 512), p
    # the largest head at batch 16 (2 CTAs per SM): three buffers of a part of a gate, R partly in L2
    p = plan(True, "lstm", "bfloat16", 16, 1, 2112, h100)
    assert p["slots"] == 3 and p["chunk_k"] in (1056, 528) and p["resident"] < 4 * 2112 // 16, p


def test_backward_keeps_r_in_registers_where_a_cta_has_an_sm_to_itself():
    # 768 x 1 B = 16 (96 CTAs on 132 SMs, one chunk): all 192 k-steps of R's slice in registers (24
    # per warp), none in shared memory; 1024 x 1 (256 k-steps): 192 in registers, 64 in shared memory
    h100 = "H100 SXM (sm_90)"
    for function, D, in_registers in (("lstm", 768, 192), ("gru", 768, 144), ("lstm", 1024, 192)):
        ksteps = CELLS[function].gates_r * D // 16
        p = plan(True, function, "bfloat16", 16, 1, D, h100)
        off = _core._C.multi_plan(True, CELLS[function].gates_r, 2, 16, 1, D, *DEVICES[h100], True, registers=False)
        assert (p["chunks"], p["reg_ksteps"], p["resident"]) == (1, in_registers, ksteps - in_registers), p
        assert (off["reg_ksteps"], off["resident"]) == (0, ksteps), off
        assert off["smem"] - p["smem"] == in_registers * 256, (p, off)
    # two CTAs per SM (1536 x 1 B = 16: 192 CTAs) or a ring of chunks (B = 64): none in registers
    assert plan(True, "lstm", "bfloat16", 16, 1, 1536, h100)["reg_ksteps"] == 0
    assert plan(True, "lstm", "bfloat16", 64, 1, 768, h100)["reg_ksteps"] == 0


def test_multicast_copy_blocks_divide_each_ctas_range():
    copy_blocks = _core._C.copy_blocks
    grid = itertools.product([2, 32, 48, 96, 128, 256], [1, 2, 4, 8, 16], [0, 1, 2, 5, 6, 64, 256])
    for slices, cluster, wanted in grid:
        if slices % cluster:
            continue
        blocks, rng = copy_blocks(slices, cluster, wanted), slices // cluster
        where = (slices, cluster, wanted, blocks)
        if wanted == 0 or cluster == 1:
            assert blocks == 0, where
            continue
        assert 1 <= blocks <= min(wanted, 32) and rng % blocks == 0, where
        assert all(rng % b or b > wanted for b in range(blocks + 1, min(rng, 32) + 1)), where  # the largest
    assert copy_blocks(96, 16, 96) == 6 and copy_blocks(96, 16, 4) == 3 and copy_blocks(2048 // 8, 4, 256) == 32


def test_refusals_say_why():
    p = plan(False, "lstm", "bfloat16", 2, 1, 2176, "H100 SXM (sm_90)")  # 272 CTAs for one head
    assert "one head's CTAs for one batch group do not fit the GPU at once" in p["why"]
    p = plan(False, "lstm", "float32", 16, 1, 8192, "H100 SXM (sm_90)")  # 16 rows of h: 512 KB
    assert "too large" in p["why"]
    p = plan(False, "lstm", "bfloat16", 16, 1, 250, "H100 SXM (sm_90)")
    assert "multiple of 16" in p["why"]
    p = plan(True, "gru", "bfloat16", 0, 1, 768, "H100 SXM (sm_90)")  # a raw op call with an empty batch
    assert "no batch row" in p["why"]


def test_fused_backward_scratch_for_split_dr_is_bounded():
    # csrc/kernels/weight_grad/sizes.h: dR (and db with it) is split over the T * B rows only when
    # there are few dR tiles, into >= 2 fixed row ranges of >= 1024 rows; their fp32 partials
    # (db's, then dR's) stay under 512 tiles of 64 x 64 for dR (8 MB) and are the whole scratch.
    C = _core._C
    seen_split = seen_single = False
    for function, dtype, B, T, N, D in itertools.product(
            CELLS, (torch.bfloat16, torch.float32), (1, 16, 256), (1, 7, 1024), (1, 12, 48), (16, 64, 128)):
        spec = CELLS[function]
        rows = T * B
        total = C.backward_workspace_floats(KERNEL_FAMILIES["fused"], spec.code, DTYPE_CODES[dtype], B, T, N, D)
        per_split = spec.gates_b * N * D + spec.gates_r * N * D * D
        where = (function, dtype, B, T, N, D)
        assert total % per_split == 0, where
        splits = total // per_split
        assert splits * spec.gates_r * N * D * D <= 512 * 64 * 64, where
        if rows < 2048:
            assert splits == 0, where  # one range: dR and db written directly, no partials
        assert splits == 0 or 2 <= splits <= rows // 1024, where
        seen_split |= splits >= 2
        seen_single |= splits == 0 and rows >= 2048
    assert seen_split and seen_single


def test_large_heads_split_dr_into_about_four_waves():
    # sizes.h: heads of 256 and more with a wave or more of 64 x 64 dR tiles (>= 512) split the
    # T * B rows so that about 2048 CTAs run (768 x 1: 576 tiles, one wave and a bit unsplit);
    # their partials are at most 4 times dR (plus db's); the multi family keeps room for at least one
    # dR and db in fp32 (the running sums of dR and db alongside its backward, weight_grad/alongside.cuh)
    # and adds one flag per CTA and its dg exchange
    C = _core._C
    lstm = CELLS["lstm"]
    for B, D, splits in [(16, 768, 4), (64, 768, 4), (16, 1024, 2), (16, 2048, 1), (16, 512, 2), (1, 768, 1)]:
        total = C.backward_workspace_floats(KERNEL_FAMILIES["multi"], lstm.code, DTYPE_CODES[torch.bfloat16],
                                            B, 1024, 1, D)
        p = plan(True, "lstm", "bfloat16", B, 1, D, "H100 SXM (sm_90)")
        flags = p["flag_words"] + p["dg_exchange_words"]
        per_split = lstm.gates_b * D + lstm.gates_r * D * D
        assert total - flags == max(splits * per_split if splits > 1 else 0, per_split), (B, D, total, flags)


def cluster_plan(backward, function, dtype, B, N, D, device="H100 SXM (sm_90)"):
    return _core._C.cluster_plan(backward, CELLS[function].gates_r, ESIZE[dtype], B, N, D, DEVICES[device][0])


def test_every_accepted_cluster_plan_fits_and_covers_the_problem():
    # csrc/kernels/multi/cluster_plan.h (the sm_90 variant): 32 units per CTA, 2 to 16 CTAs per
    # cluster, 16 rows per CTA; shared memory = two buffers of exchanged rows, two of partial sums,
    # and R's fragments (4 n-tiles per gate; backward R^T's, one "gate").
    smem_block = DEVICES["H100 SXM (sm_90)"][0]
    accepted = set()
    for function, dtype, backward, B, N, D in itertools.product(
            CELLS, ESIZE, (False, True), (1, 16, 17, 64), (1, 3), range(32, 1025, 16)):
        p = cluster_plan(backward, function, dtype, B, N, D)
        if "why" in p:
            continue
        where = (function, dtype, backward, B, N, D)
        gates_r, k = CELLS[function].gates_r, 8 if dtype == "float32" else 16
        width = (gates_r if backward else 1) * D
        assert D % 32 == 0 and p["size"] * 32 == D and 2 <= p["size"] <= 16, where
        assert p["groups"] * 16 >= B > (p["groups"] - 1) * 16 and p["heads"] == N, where
        assert p["a_row"] >= width * ESIZE[dtype] and p["red_offset"] == 2 * 16 * p["a_row"], where
        assert p["red_stride"] % 32 == 8 and p["red_stride"] >= (1 if backward else gates_r) * 32, where
        k_groups = 4 if backward else 2  # warps = k-groups x n-groups; two buffers of partial sums
        assert p["r_offset"] == p["red_offset"] + 2 * k_groups * 16 * p["red_stride"] * 4, where
        assert p["smem"] == p["r_offset"] + width // k * (1 if backward else gates_r) * 4 * 256, where
        assert p["smem"] <= smem_block - RESERVE, where
        accepted.add((function, dtype, backward, D))
    # issue 4's 256 x 3 row: every cell runs in clusters forward and backward in 16-bit types
    for function, dtype, backward in itertools.product(CELLS, ("bfloat16", "float16"), (False, True)):
        assert (function, dtype, backward, 256) in accepted, (function, dtype, backward)


def test_cluster_plan_refusals_say_why():
    assert "2 to 16 CTAs" in cluster_plan(False, "lstm", "bfloat16", 16, 1, 768)["why"]  # 24 CTAs
    assert "2 to 16 CTAs" in cluster_plan(False, "lstm", "bfloat16", 16, 1, 32)["why"]   # one CTA
    assert "multiple of 32" in cluster_plan(False, "lstm", "bfloat16", 16, 1, 272)["why"]
    assert "no batch row" in cluster_plan(True, "gru", "bfloat16", 0, 1, 256)["why"]
    # LSTM 512 (16 CTAs): forward R's slice is 128 KB (4 gates x 512 x 32 x 2 B) and fits; backward
    # R^T's 128 KB plus two 65 KB stages do not
    assert "why" not in cluster_plan(False, "lstm", "bfloat16", 16, 1, 512)
    assert "does not fit" in cluster_plan(True, "lstm", "bfloat16", 16, 1, 512)["why"]
    # an A6000 (99 KB per block) holds no LSTM 256 backward slice (64 KB of R^T + 66 KB of stage)
    assert "does not fit" in cluster_plan(True, "lstm", "bfloat16", 16, 1, 256, "RTX A6000 (sm_86)")["why"]


def cluster_wide_plan(backward, function, dtype, B, N, D, device="H100 SXM (sm_90)"):
    return _core._C.cluster_wide_plan(backward, CELLS[function].gates_r, ESIZE[dtype], B, N, D, DEVICES[device][0])


def test_every_accepted_cluster_wide_plan_fits_and_covers_the_problem():
    # cluster_plan.h make_wide_plan (the sm_90 kernels for heads beyond 16 CTAs of 32 units): 48
    # units per CTA in 12 warps, 16 rows; forward warps = 2 k-groups x 6 tiles (a fragment per
    # gate), backward 4 k-groups x 3 pairs of tiles (K = gates x D, two fragments); shared memory =
    # the exchanged rows (forward: two h buffers; backward: one dg stage), one buffer of the
    # k-groups' partial sums, then the k-steps of R each warp does not hold in registers.
    smem_block = DEVICES["H100 SXM (sm_90)"][0]
    accepted = set()
    for function, dtype, backward, B, N, D in itertools.product(
            CELLS, ESIZE, (False, True), (1, 16, 17, 64), (1, 3), range(16, 1025, 16)):
        p = cluster_wide_plan(backward, function, dtype, B, N, D)
        if "why" in p:
            continue
        where = (function, dtype, backward, B, N, D)
        gates_r = CELLS[function].gates_r
        width, frags, k_groups = (gates_r * D, 2, 4) if backward else (D, gates_r, 2)
        columns = 48 if backward else gates_r * 48  # of the partial sums
        assert dtype != "float32" and D % 48 == 0 and p["size"] * 48 == D and 2 <= p["size"] <= 16, where
        assert p["groups"] * 16 >= B > (p["groups"] - 1) * 16 and p["heads"] == N and p["threads"] == 12 * 32, where
        assert p["a_row"] >= width * 2 and p["red_offset"] == (1 if backward else 2) * 16 * p["a_row"], where
        assert p["red_stride"] % 32 == 8 and p["red_stride"] >= columns, where
        assert p["r_offset"] == p["red_offset"] + k_groups * 16 * p["red_stride"] * 4, where
        part = -(-(width // 16) // k_groups)  # k-steps of a k-group; registers hold the first register_ksteps
        in_smem = max(part - p["register_ksteps"], 0)
        assert p["smem"] == p["r_offset"] + 12 * in_smem * frags * 256 <= smem_block - RESERVE, where
        assert p["register_ksteps"] * frags * 2 <= 120, where  # 32-bit registers of R per thread
        accepted.add((function, backward, D))
    # issue 4's 768 x 1 row runs in one cluster of 16 for every cell in 16-bit types
    for function, backward in itertools.product(CELLS, (False, True)):
        assert (function, backward, 768) in accepted and (function, backward, 576) in accepted, function
    assert "16-bit" in cluster_wide_plan(False, "lstm", "float32", 16, 1, 768)["why"]
    assert "48 units" in cluster_wide_plan(True, "lstm", "bfloat16", 16, 1, 1024)["why"]
    assert "48 units" in cluster_wide_plan(False, "lstm", "bfloat16", 16, 1, 512)["why"]
