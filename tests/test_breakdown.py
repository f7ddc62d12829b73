"""What a peak is made of: checked by hand, against torch's MemTracker, and on ViT-S / ConvNeXt rows."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import make_batches, make_tiny_vit
from fps_profile.measure import phases
from fps_profile.rows.result import Result
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import measure
from fps_profile.trackers.labels import BEFORE
from fps_profile.trackers import LiveTensorBytes
from fps_profile.trackers.breakdown import PeakBreakdown
from fps_profile.trackers.cuda import record_extra_run


def explained(fn, model, inputs=(), optimizer=None, breakdown=True):
    with LiveTensorBytes("cpu") as live:
        if breakdown:
            with PeakBreakdown(live, model, inputs=inputs, optimizer=optimizer) as bd:
                fn()  # whatever it returns is dropped inside the region
        else:
            bd = None
            fn()
    return live.peak, bd


def ranked_bytes(model: nn.Module) -> int:
    from fps_profile.selection.scope import Role, assign_roles, get_scope

    params = dict(model.named_parameters())
    return sum(params[n].numel() * params[n].element_size()
               for n, (role, _, _) in assign_roles(model, get_scope("gps")).items() if role is Role.RANKED)


def param_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


# -- by hand ---------------------------------------------------------------------------------------------------


def test_breakdown_of_a_known_peak_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU())
    x = torch.randn(8, 100)

    def fn():
        a = model(x)  # the Linear's output dies inside ReLU; ReLU saves its own output (1600 bytes)
        big = torch.empty(10_000)  # the peak: 40,000 bytes no module holds
        del big
        a.sum().backward()

    peak, bd = explained(fn, model, inputs=x)
    assert bd.peak_phase == "forward"
    assert bd.peak.total == peak == sum(bd.peak.breakdown().values())
    # Tensors other code keeps alive before the run (a library's import-time constants: peft, transformers)
    # count too, as in max_memory_allocated, held by "(before the run)"; they depend on what the test
    # session imported, so they are read, not assumed.
    stray = sum(b for (holder, _), b in bd.peak.holders.items() if holder == BEFORE)
    assert bd.peak.breakdown() == {"weights": 20_200, "buffers": 0, "inputs": 3_200, "gradients": 0,
                                   "optimizer_state": 0, "mask": 0, "activations": 1_600,
                                   "temporaries": 40_000 + stray}
    assert [h for h in bd.peak.top() if h["module"] != BEFORE][:4] == [  # strays: whatever earlier tests left
        {"module": "(outside modules)", "category": "temporaries", "bytes": 40_000},
        {"module": "0", "category": "weights", "bytes": 20_200},
        {"module": "(inputs)", "category": "inputs", "bytes": 3_200},
        {"module": "1", "category": "activations", "bytes": 1_600},
    ]
    assert set(bd.phases) == {"forward", "backward"}
    assert 20_200 + 3_200 < bd.phases["backward"].total < peak


def test_breakdown_leaves_the_measured_peak_unchanged():
    model = make_tiny_vit().train()
    (images, labels), = make_batches(1, 4)
    step = phases.train_step_fn(model, images, labels)
    step()  # optimizer state exists from here on
    plain, _ = explained(step, model, breakdown=False)
    peak, bd = explained(step, model, inputs=(images, labels), optimizer=step.optimizer)
    assert peak == plain == bd.peak.total == sum(bd.peak.breakdown().values())
    batches = make_batches(1, 4)
    sel = phases.select_fn(model, batches, "gps", phases.BudgetSpec(k=1))
    plain, _ = explained(sel, model, breakdown=False)
    peak, bd = explained(sel, model, inputs=batches)
    assert peak == plain == bd.peak.total


def test_categories_agree_with_torch_memtracker():
    from torch_memtracker import memtracker_peak

    model = make_tiny_vit().train()
    (images, labels), = make_batches(1, 8)
    step = phases.train_step_fn(model, images, labels)
    step()
    theirs = memtracker_peak(step, model, inputs=(images, labels), optimizer=step.optimizer)
    peak, bd = explained(step, model, inputs=(images, labels), optimizer=step.optimizer)
    ours = bd.peak.breakdown()
    # Tensors other code keeps alive (a library's import-time constants) count in ours, not in MemTracker's.
    stray = sum(b for (holder, _), b in bd.peak.holders.items() if holder == BEFORE)
    assert theirs["total"] == peak - stray
    for name in ("weights", "buffers", "gradients", "optimizer_state"):
        assert ours[name] == theirs[name], name
    assert ours["inputs"] == theirs["external"]
    # MemTracker calls everything made in forward an activation, in backward a temporary
    made = ours["activations"] + ours["temporaries"] - stray
    assert made == theirs["made_in_forward"] + theirs["made_in_backward"]
    assert abs(ours["activations"] - theirs["made_in_forward"]) <= 0.01 * ours["activations"]


def test_gps_scoring_holds_the_ranked_gradients_and_masks_are_labelled():
    model = make_tiny_vit()
    batches = make_batches(1, 4)
    _, bd = explained(phases.select_fn(model, batches, "gps", phases.BudgetSpec(k=1)), model, inputs=batches)
    assert list(bd.phases) == ["forward", "backward", "scoring"]
    scoring = bd.phases["scoring"].breakdown()
    assert scoring["gradients"] == ranked_bytes(model)  # only the ranked tensors' gradients outlive backward
    assert scoring["activations"] == 0
    assert bd.phases["backward"].categories["activations"] > 0


def test_fps_holds_no_gradients_and_its_mask_is_the_mask():
    model = make_tiny_vit()
    batches = make_batches(1, 1)
    kept = []
    _, bd = explained(lambda: kept.append(fps_select(model, batches)), model, inputs=batches)
    assert list(bd.phases) == ["forward", "scoring"]
    for snap in bd.phases.values():
        assert snap.categories.get("gradients", 0) == snap.categories.get("optimizer_state", 0) == 0
        assert snap.categories.get("activations", 0) == 0  # no_grad: nothing is saved for backward
    scoring = bd.phases["scoring"]
    # compact masks (positions) are small: the scoring peak may come before the last of them
    assert scoring.categories.get("mask", 0) <= kept[0].nbytes
    # masks are held by the modules whose parameters they select
    held = {h for (h, c), b in scoring.holders.items() if c == "mask"}
    assert held <= {name.rpartition(".")[0] or "(model)" for name in kept[0]}


def fps_select(model, batches):
    return phases.select_fn(model, batches, "fps", phases.BudgetSpec(k=1))()


def test_sparse_step_mask_is_the_index_buffers_and_state_only_the_values():
    from fps_profile.selection.sparse import SparseValues

    model = make_tiny_vit().train()
    (images, labels), = make_batches(1, 2)
    mask = phases.select_fn(model, [(images, labels)], "magnitude", phases.BudgetSpec(k=1))()
    step = phases.train_step_fn(model, images, labels, mask=mask)
    step()
    _, bd = explained(step, model, inputs=(images, labels), optimizer=step.optimizer)
    index = sum(m.index.nbytes for m in model.modules() if isinstance(m, SparseValues))
    for name, snap in bd.phases.items():
        assert snap.categories["mask"] == index, name
        # AdamW: two moments per trainable entry, plus one 4-byte step count per parameter
        assert snap.categories["optimizer_state"] == 2 * param_bytes(step.params) + 4 * len(step.params), name


def test_extra_run_counts_blocks_and_names_the_slack():
    """The cuda backend's extra run, on the CPU: blocks of 512 bytes, the rounding as allocator slack."""
    from fps_profile.trackers.cuda import round_size

    model = make_tiny_vit()
    images = make_batches(1, 2)[0][0]
    bd = record_extra_run(phases.inference_fn(model, images), model, inputs=images, device_type="cpu",
                          round_bytes=round_size)
    snap = bd.peak
    assert snap.total % 512 == 0 and snap.total == sum(snap.breakdown().values())
    assert snap.categories["weights"] == param_bytes(model.parameters())
    assert snap.categories["allocator_slack"] > 0
    exact = sum(round_size(p.nbytes) - p.nbytes for p in model.parameters())
    assert snap.holders[("(allocator)", "allocator_slack")] >= exact


# -- rows: cpu (exact) ------------------------------------------------------------------------------------------


def check_row(row: Result) -> dict[str, int]:
    assert row.status == "ok", row.error
    bd = row.peak_breakdown_bytes
    assert sum(bd.values()) == row.peak_allocated_bytes  # exactly: both count the same storages
    assert row.peak_phase in row.peak_breakdown_by_phase
    assert row.peak_breakdown_by_phase[row.peak_phase] == bd
    assert len(row.peak_top_modules) >= 5
    assert [m["bytes"] for m in row.peak_top_modules] == sorted((m["bytes"] for m in row.peak_top_modules),
                                                                reverse=True)
    assert Result.from_dict(json.loads(row.to_json())).peak_top_modules == row.peak_top_modules
    return bd


def row_of(model, batch, phase, selector=None, device="cpu"):
    return measure(Cell(model=model, batch_size=batch, phase=phase, selector=selector, device=device, warmup=1,
                        repeats=1))


@pytest.mark.parametrize("model", ["test_vit", "test_convnext"])
def test_cpu_full_step_holds_two_adamw_moments(model):
    """timm's test models: the same claim as on ViT-S/16 and ConvNeXt, in a fraction of the time."""
    row = row_of(model, 2, "train_step")
    bd = check_row(row)
    assert row.peak_breakdown_run == "measured"
    assert bd["optimizer_state"] == pytest.approx(2 * 4 * row.params_trainable, rel=0.01)
    assert bd["weights"] == 4 * row.params_total


def test_cpu_fps_row_holds_no_gradient_state():
    bd = check_row(row_of("test_vit", 2, "select", "fps"))
    assert bd["gradients"] == bd["optimizer_state"] == bd["activations"] == 0


def test_cpu_gps_peak_at_batch_16_is_activations():
    """At batch 16 activations outweigh everything (the tiny ViT: the claim does not depend on the width)."""
    model = make_tiny_vit()
    batches = make_batches(1, 16)
    peak, bd = explained(phases.select_fn(model, batches, "gps", phases.BudgetSpec(k=1)), model, inputs=batches)
    snap = bd.peak.breakdown()
    assert max(snap, key=snap.get) == "activations" and bd.peak_phase == "backward"
    assert sum(snap.values()) == peak
    assert bd.phases["scoring"].categories["gradients"] == ranked_bytes(model)


# -- rows: sim --------------------------------------------------------------------------------------------------


def _sim_ranked_bytes(name: str) -> int:
    import timm

    with torch.device("meta"):
        return ranked_bytes(timm.create_model(name, pretrained=False))


SIM_MODELS = ["vit_small_patch16_224", pytest.param("convnext_atto", marks=pytest.mark.slow)]


@pytest.mark.parametrize("model", SIM_MODELS)
def test_sim_rows_at_batch_16(model):
    gps = row_of(model, 16, "select", "gps", device="sim")
    bd = check_row(gps)
    assert max(bd, key=bd.get) == "activations" and gps.peak_phase == "backward"
    assert gps.peak_breakdown_by_phase["scoring"]["gradients"] == pytest.approx(_sim_ranked_bytes(model), rel=0.01)
    assert bd["workspace"] == 2 * 32 * 2**20  # two cuBLAS handles on an H100: forward and backward threads

    full = row_of(model, 16, "train_step", device="sim")
    bd = check_row(full)
    assert bd["optimizer_state"] == pytest.approx(2 * 4 * full.params_trainable, rel=0.01)
    assert bd["allocator_slack"] > 0  # block rounding, apart from what the tensors asked for

    fps = row_of(model, 16, "select", "fps", device="sim")
    bd = check_row(fps)
    assert bd["gradients"] == bd["optimizer_state"] == bd["activations"] == 0


# -- shown: summary, explain, report, figure, gate (synthetic rows) -------------------------------------------


def shown_rows():
    from plotrows import MiB, row

    def bd(**kw):
        out = dict.fromkeys(("weights", "buffers", "inputs", "gradients", "optimizer_state", "mask", "activations",
                             "temporaries"), 0)
        out.update({k: v * MiB for k, v in kw.items()})
        return out

    gps_phases = {"forward": bd(weights=10, inputs=2, activations=70, temporaries=3),
                  "backward": bd(weights=10, inputs=2, activations=68, temporaries=20),
                  "scoring": bd(weights=10, inputs=2, gradients=9, temporaries=1)}
    top = [{"module": f"blocks.{i}.mlp.fc1", "category": "activations", "bytes": (10 - i) * MiB} for i in range(6)]
    return [
        row("gps", "small_vit", 8, "select", 100 * MiB, peak_breakdown_bytes=gps_phases["backward"],
            peak_phase="backward", peak_top_modules=top, peak_breakdown_by_phase=gps_phases,
            peak_breakdown_run="measured"),
        row("fps", "small_vit", 8, "select", 13 * MiB, peak_breakdown_bytes=bd(weights=10, inputs=2, temporaries=1),
            peak_phase="forward", peak_top_modules=top[:1],
            peak_breakdown_by_phase={"forward": bd(weights=10, inputs=2, temporaries=1)}),
        row("magnitude", "small_vit", 8, "select", 11 * MiB),  # an older row: no breakdown
    ]


def test_summary_column_says_what_the_peak_is_mostly():
    from fps_profile.analysis.summary import format_summary

    text = format_summary(shown_rows())
    assert "peak is mostly" in text
    gps_line = next(ln for ln in text.splitlines() if "| gps " in ln)
    assert gps_line.rstrip(" |").endswith("activations 68%")
    assert "peak is mostly" not in format_summary([r for r in shown_rows() if r.selector == "magnitude"])


def test_explain_command(tmp_path, capsys):
    from fps_profile.cli import main
    from plotrows import write_results

    path = tmp_path / "rows.jsonl"
    write_results(path, shown_rows())
    assert main(["explain", str(path), "--cell", "what=gps batch=8", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "peak 100.0 MiB in backward, in the measured run; the categories sum to the peak" in out
    assert "| activations | 68.0 MiB | 68.0% |" in out.replace("  ", " ").replace("  ", " ")
    assert "* backward" in out and "blocks.2.mlp.fc1" in out and "blocks.3.mlp.fc1" not in out
    assert main(["explain", str(path), "--cell", "what=magnitude"]) == 0
    assert "no breakdown: the row comes from a results file written before" in capsys.readouterr().out
    assert main(["explain", str(path)]) == 0
    listing = capsys.readouterr().out
    assert "activations 68%" in listing and "| magnitude " in listing
    assert main(["explain", str(path), "--cell", "what=gsp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'gps'" in err
    assert main(["explain", str(path), "--cell", "modle=x"]) == 2
    assert "did you mean 'model'" in capsys.readouterr().err


def test_report_section_and_figure_show_each_selector_and_phase(tmp_path):
    from fps_profile.plots import breakdown_bars
    from fps_profile.plots.report import build_report

    rows = shown_rows()
    text = build_report(rows)
    assert "What the peak is made of at batch 8" in text
    assert "| GPS · backward * " in text and "| GPS · scoring " in text and "| FPS · forward * " in text
    assert "No breakdown for magnitude: the row comes from a results file written before" in text
    fig = breakdown_bars(rows)
    bars = {p.get_gid(): p.get_width() for ax in fig.axes for p in ax.patches}
    assert bars["gps:backward:activations"] == pytest.approx(68)  # MiB
    assert bars["gps:scoring:gradients"] == pytest.approx(9)
    assert "magnitude:forward:weights" not in bars and "fps:forward:activations" not in bars
    assert breakdown_bars([rows[2]]) is None


def test_gate_shows_bytes_moving_between_categories_without_failing():
    import copy

    from fps_profile.analysis.gate import compare

    old = shown_rows()
    new = copy.deepcopy(old)
    new[0].peak_breakdown_bytes["activations"] -= 1024
    new[0].peak_breakdown_bytes["temporaries"] += 1024
    report = compare(old, new)
    moved = {c.metric: c.verdict for c in report.changes}
    assert moved == {"peak_breakdown_bytes.activations": "changed", "peak_breakdown_bytes.temporaries": "changed"}
    assert not report.failed(strict=True)


def test_asv_tracks_every_category():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import CATEGORIES

    from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES

    assert tuple(CATEGORIES) == BREAKDOWN_CATEGORIES
