"""Selection and the sparse step under FSDP2 on 2 CPU ranks (gloo) equal one process's on the global batch.

The work runs in three shared spawns (module-scoped fixtures: selection, sparse
step, memory); each rank computes the single-process reference itself, on the
global batches, before sharding (tests/distributed_cases.py).

Tolerances. Masks are compared away from ties with test_selectors.mask_mismatches:
an entry may differ only where the single-process score lies within ``tol`` (of the
tensor's largest score) of the kept/dropped boundary. Sharding changes only the
order of float32 sums (statistics and gradients are sums over the ranks' halves of
the batch); the largest difference measured between sharded and single-process
scores is 4.6e-7 of the tensor maximum for FPS, Wanda, SNIP and cross-entropy or
LM GPS on these models, and 1.8e-5 for GPS's SupCon gradient summed over two
batches (it cancels heavily). ``tol`` is 1e-5 and 5e-4, about 25x those. On this
machine every mask is in fact identical. The sparse step's tolerance is derived
in test_sparse_step_equals_the_single_process_step.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed_cases as cases
from fps_profile import UserError
from fps_profile import procs
from fps_profile.measure.distributed.launch import RankError, RankTimeout, run_ranks
from fps_profile.measure.distributed.shard import find_blocks, local_batch
from fps_profile.selection.sharding.budget import _keys
from fps_profile.measure.distributed.launch import RANK_MODULE
from fps_profile.measure.distributed.memory import rank_peaks
from test_selectors import mask_mismatches

WORLD = 2
FORWARD_TOL = 1e-5
SUPCON_TOL = 5e-4
GONE_WITHIN_S = 10.0

# (model, Conv1D sharded on its output axis, CPUOffloadPolicy)
SELECT_KINDS = [("vit", True, False), ("conv", True, False), ("hf:llama-tiny", True, False),
                ("hf:gpt2-tiny", True, False), ("hf:gpt2-tiny", False, False), ("vit", True, True)]
SPARSE_KINDS = [("vit", False), ("hf:llama-tiny", False), ("hf:gpt2-tiny", False), ("vit", True)]


def rank_processes() -> list[int]:
    """Rank processes below this one (the launcher's module in their command line)."""
    return [p for p in procs.descendants(os.getpid()) if RANK_MODULE.encode() in procs.cmdline(p)]


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(0.1)
    return True


# ----------------------------------------------------------------------------- launcher

def test_run_ranks_returns_every_rank_result_in_rank_order():
    got = run_ranks(cases.rank_and_sum, WORLD, args=("tag",), timeout_s=120)
    assert got == [(0, 2, 3.0, "tag"), (1, 2, 3.0, "tag")]  # the all-reduce saw both ranks
    assert not rank_processes()


def test_a_crashing_rank_is_named_with_its_one_line_error_and_nothing_is_left():
    with pytest.raises(RankError) as info:
        run_ranks(cases.fail_on_rank_1, WORLD, timeout_s=120)
    assert info.value.rank == 1
    assert str(info.value) == "rank 1 of 2 failed: ValueError: bad value on rank one"
    assert "Traceback" in info.value.stderr
    assert not rank_processes()


def test_a_rank_killed_by_a_signal_is_named_and_a_user_error_stays_one():
    with pytest.raises(RankError, match=r"^rank 0 of 2 failed: killed by SIGKILL"):
        run_ranks(cases.kill_rank_0, WORLD, timeout_s=120)
    with pytest.raises(UserError, match=r"^rank [01]: k must be an integer >= 1, not 0$"):  # both raise it
        run_ranks(cases.user_error, WORLD, timeout_s=120)
    assert not rank_processes()


def test_a_hanging_rank_times_out_and_is_killed(tmp_path):
    start = time.monotonic()
    with pytest.raises(RankTimeout, match=r"^ranks 0, 1 of 2 did not finish within 20 s$"):
        run_ranks(cases.hang, WORLD, args=(str(tmp_path),), timeout_s=20)
    assert time.monotonic() - start < 20 + GONE_WITHIN_S
    pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("rank*")]  # those that got as far as the hang
    assert not any(map(procs.alive, pids))
    assert not rank_processes()


def test_bad_arguments_fail_before_any_rank_starts():
    with pytest.raises(UserError, match="world size must be an integer >= 1"):
        run_ranks(cases.rank_and_sum, 0)
    with pytest.raises(UserError, match="module-level function"):
        run_ranks(lambda rank, world: rank, 2)


DRIVER = """
import sys
sys.path[:0] = {paths!r}
import distributed_cases
from fps_profile.measure.distributed.launch import run_ranks
run_ranks(distributed_cases.hang, 2, args=({where!r}, True), timeout_s=600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_interrupted_caller_leaves_no_rank_behind(tmp_path, sig):
    """A caller interrupted while its world-size-2 call runs: every rank is gone within 10 s, and
    on Ctrl-C the processes the ranks started too (the call's process group is killed). SIGTERM
    without a handler and SIGKILL end the caller at once: the ranks die with it (PR_SET_PDEATHSIG)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(paths=[str(Path(__file__).parent), os.getcwd()], where=str(tmp_path)))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        started = lambda: len(list(tmp_path.glob("rank*"))) == 2 and len(list(tmp_path.glob("child*"))) == 2  # noqa: E731
        assert wait_until(started, 180), "the ranks did not start within 180 s"
        ranks = [int(p.name.split("-")[1]) for p in tmp_path.glob("rank*")]
        children = [int(p.name.split("-")[1]) for p in tmp_path.glob("child*")]
        assert all(map(procs.alive, ranks + children))
        os.kill(driver.pid, sig)
        driver.wait(timeout=60)
        assert wait_until(lambda: not any(map(procs.alive, ranks)), GONE_WITHIN_S), "ranks outlived the caller"
        if sig == signal.SIGINT:
            assert wait_until(lambda: not any(map(procs.alive, children)), GONE_WITHIN_S), "a rank's child lived on"
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in tmp_path.glob("child*"):  # SIGTERM/SIGKILL: a rank's own child is the caller's to clean up
            procs.kill([int(p.name.split("-")[1])])


# ----------------------------------------------------------------------------- sharding helpers (no ranks)

def test_blocks_are_found_from_the_model():
    from fps_profile.models.hf import build_lm

    from conftest import make_tiny_vit

    vit = make_tiny_vit()
    assert find_blocks(vit) == list(vit.blocks)
    llama = build_lm("hf:llama-tiny")
    assert find_blocks(llama) == list(llama.model.layers)  # _no_split_modules and the repeated children agree
    gpt2 = build_lm("hf:gpt2-tiny")
    assert find_blocks(gpt2) == list(gpt2.transformer.h)
    import timm

    convnext = timm.create_model("test_convnext", pretrained=False)
    blocks = find_blocks(convnext)
    assert all(any(b is s for b in blocks) for s in convnext.stages)  # the stages, and
    assert all(any(b is blk for b in blocks) for s in convnext.stages for blk in s.blocks if len(s.blocks) > 1)
    assert find_blocks(cases.grouped_convnet()) == []  # nothing repeats: the root alone is sharded


def test_local_batch_takes_the_rank_slice_of_an_even_split():
    x, y = torch.arange(8).view(8, 1), torch.arange(8)
    xs, ys = local_batch((x, y), 1, 2)
    assert xs.flatten().tolist() == [4, 5, 6, 7] and ys.tolist() == [4, 5, 6, 7]
    with pytest.raises(UserError, match="batch size 6 is not a multiple of the world size 4"):
        local_batch((torch.zeros(6, 1), torch.zeros(6)), 0, 4)


def test_bisection_keys_keep_the_float_order():
    vals = torch.tensor([-3.5, -1e-30, -0.0, 0.0, 1e-38, 1e-30, 0.5, 2.0, float("inf")])
    keys = _keys(vals)
    assert keys.tolist() == sorted(keys.tolist())
    assert keys[2] == keys[3]  # -0.0 and +0.0 are one value
    assert torch.unique(keys).numel() == vals.numel() - 1


def test_rank_peaks_are_reported_as_max_and_spread_never_a_sum():
    peaks = rank_peaks([300, 500])
    assert (peaks.max, peaks.spread) == (500, 200)
    assert peaks.to_dict() == {"world_size": 2, "peak_max_bytes": 500, "peak_spread_bytes": 200,
                               "peaks_bytes": [300, 500]}


# ----------------------------------------------------------------------------- selection

@pytest.fixture(scope="module")
def selected():
    return run_ranks(cases.select_case, WORLD, args=(SELECT_KINDS,), timeout_s=900)[0]


def _oriented(case, name, tensor):
    """Conv1D weights ([in, out]) transposed, so a row is an output neuron as mask_mismatches reads it."""
    return tensor.t() if case["axes"].get(name) == 1 else tensor


@pytest.mark.parametrize("budget", cases.BUDGETS, ids=lambda b: "-".join(f"{k}{v}" for k, v in b.items()))
@pytest.mark.parametrize("selector", cases.SELECTORS)
@pytest.mark.parametrize("kind", SELECT_KINDS, ids=lambda k: f"{k[0]}{'' if k[1] else '-conv1d-dim0'}"
                         f"{'-offload' if k[2] else ''}")
def test_sharded_mask_is_the_single_process_mask(selected, kind, selector, budget):
    case = selected[kind]
    mask, meta = case["masks"][(selector, str(budget))]
    assert meta["world_size"] == "2" and meta["selector"] == selector
    whole = case["random"][str(budget)]  # one process's mask: roles of the tensors it does not rank
    if selector == "random":
        for name in whole:
            assert torch.equal(mask[name], whole[name]), name
        return
    scores = case["reference"][selector]
    for name in whole:
        if name not in scores:
            assert torch.equal(mask[name], whole[name]), name
    tol = SUPCON_TOL if (selector == "gps" and kind[0] == "vit") else FORWARD_TOL
    problems = mask_mismatches({n: _oriented(case, n, mask[n]) for n in scores},
                               {n: _oriented(case, n, s) for n, s in scores.items()}, **budget, tol=tol)
    assert not problems, "; ".join(problems)


def test_gpt2_conv1d_weights_were_sharded_both_ways(selected):
    """The per-column top-k runs locally (Conv1D sharded on dim 1) and across ranks (dim 0)."""
    for by_output, dim in ((True, 1), (False, 0)):
        placements = selected[("hf:gpt2-tiny", by_output, False)]["placements"]
        assert placements["transformer.h.0.attn.c_attn.weight"] == dim
        assert placements["transformer.h.0.mlp.c_proj.weight"] == dim
    # The grouped convolution's 9 rows: 5 on rank 0, 4 on rank 1 (a shard starts inside a group).
    assert selected[("conv", True, False)]["placements"]["1.weight"] == 0


def test_ranks_with_batches_of_different_sizes_fail_alike():
    """Unequal slices would make FSDP2's average of the ranks' mean-loss gradients differ from the
    global batch's gradient: every rank refuses (none is left waiting in a collective)."""
    with pytest.raises(UserError, match=r"^rank [01]: the ranks got batches of different sizes \(2 to 3 samples\)"):
        run_ranks(cases.uneven_case, WORLD, args=([2, 3],), timeout_s=300)


# ----------------------------------------------------------------------------- sparse step

@pytest.fixture(scope="module")
def stepped():
    return run_ranks(cases.sparse_case, WORLD, args=(SPARSE_KINDS,), timeout_s=900)


@pytest.mark.parametrize("kind", SPARSE_KINDS, ids=lambda k: k[0] + ("-offload" if k[1] else ""))
def test_sparse_step_leaves_every_frozen_entry_bit_identical(stepped, kind):
    case = stepped[0][kind]
    moved = 0
    for name, initial in case["initial"].items():
        frozen = ~case["mask"][name]
        assert torch.equal(case["trained"][name][frozen], initial[frozen]), name
        moved += int((case["trained"][name] != initial).sum())
    assert moved >= 0.9 * case["mask"].stats().trainable  # and the trainable ones did train


@pytest.mark.parametrize("kind", SPARSE_KINDS, ids=lambda k: k[0] + ("-offload" if k[1] else ""))
def test_sparse_step_keeps_gradients_and_state_for_trainable_entries_only(stepped, kind):
    per_rank = [r[kind] for r in stepped]
    assert sum(r["trainable_local"] for r in per_rank) == per_rank[0]["mask"].stats().trainable
    for r in per_rank:
        facts = r["facts"]
        assert facts["state_numel"] == 2 * r["trainable_local"]  # AdamW's exp_avg and exp_avg_sq, nothing else
        assert facts["values_numel"] + facts["whole_numel"] == r["trainable_local"]
        assert facts["partial_grads"] and not any(facts["partial_grads"])  # dense shard gradients dropped
        assert facts["frozen_grads"] and not any(facts["frozen_grads"])
        # A backward leaves exactly the trainable entries' gradients alive: no dense shard gradient, and
        # no group's flat reduce-scatter buffer kept alive by a bias's gradient (a view into it).
        assert facts["backward_leaves_bytes"] == facts["grad_bytes"]


@pytest.mark.parametrize("kind", SPARSE_KINDS, ids=lambda k: k[0] + ("-offload" if k[1] else ""))
def test_sparse_step_gradients_are_the_global_batch_gradients(stepped, kind):
    """The first step's gradients of the trained entries, before clipping, gathered from the
    ranks, are one process's on the whole batch: averaged over the ranks, not summed (AdamW
    and clipping would hide a constant factor), up to summation order (1e-5 of the
    tensor's largest, as for the selection scores)."""
    case = stepped[0][kind]
    assert set(case["sharded_first_grads"]) == set(case["first_grads"])
    for name, ref in case["first_grads"].items():
        got, trained = case["sharded_first_grads"][name], case["mask"][name]
        assert torch.equal(got[~trained], torch.zeros_like(got[~trained])), name
        assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), name


@pytest.mark.parametrize("kind", SPARSE_KINDS, ids=lambda k: k[0] + ("-offload" if k[1] else ""))
def test_sparse_step_equals_the_single_process_step(stepped, kind):
    """The trained weights equal one process's after the same STEPS AdamW steps, entry by entry.

    The gradients differ only by summation order (each rank's half of the batch,
    averaged by FSDP2): by at most ~5e-7 of the tensor's largest gradient ``G`` (as the
    selection scores above); allow ``e = 1e-5 G``. An entry whose gradients are at least
    ``g`` in size then sees each one change by a relative ``r = e / g`` at most, and
    AdamW's update ``m / (sqrt(v) + eps)`` (at most ``sqrt(t)`` in size at step t) by at
    most ``2 r sqrt(t)``; its weight moves by ``lr * sum_t 2 r sqrt(t)`` at most, lr = 1e-3.
    With ``r`` capped at 1 (a gradient near 0 may flip its update's sign) that is the
    tolerance of every trained entry: 8.3e-6 where ``g >= 1e-2 G``, 8.3e-3 at worst.
    Frozen entries are compared exactly.
    """
    case = stepped[0][kind]
    lr, steps = 1e-3, cases.STEPS
    worst = 2 * lr * sum(math.sqrt(t) for t in range(1, steps + 1))
    for name, ref in case["reference"].items():
        diff = (case["trained"][name] - ref).abs()
        trained = case["mask"][name]
        assert diff[~trained].max().item() == 0 if (~trained).any() else True, name
        if not trained.any():
            continue
        grads = torch.stack([g[name].abs() for g in case["grads"]])
        r = (1e-5 * grads.max() / grads.min(0).values).clamp(max=1.0)
        excess = diff - worst * r
        assert excess[trained].max().item() <= 0, f"{name}: {diff[trained][excess[trained] > 0][:5].tolist()}"


# ----------------------------------------------------------------------------- memory

def test_per_rank_tracker_counts_fsdp2_all_gathers_and_their_frees():
    """Around a no-grad forward of the sharded ViT: the all-gathered weights are counted while they
    live and freed after (live bytes end where they began, plus the logits); a tracker that does
    not see FSDP2's storage resizes (and counts a DTensor at its global size) cannot say that."""
    for rank in run_ranks(cases.memory_case, WORLD, timeout_s=300):
        good, plain = rank["patched"], rank["plain"]
        assert good["after"] - good["baseline"] == good["logits"], rank
        assert good["peak"] - good["baseline"] >= rank["block_bytes"], rank  # a block's all-gathered weights
        assert plain["after"] - plain["baseline"] > plain["logits"] + rank["block_bytes"], rank
        assert plain["baseline"] - good["baseline"] == rank["model_bytes"], rank  # DTensors at their global size
