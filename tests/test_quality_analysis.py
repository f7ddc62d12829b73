"""Reading finetune rows: mean and std over seeds, the gate's direction, tables, figures, report, explain.

Rows are written by hand here (no measurement), so every expected figure is computed from them.
"""

from __future__ import annotations

import statistics

import pytest

from fps_profile.analysis.explain import explain, overview
from fps_profile.analysis.gate import compare
from fps_profile.analysis.quality import format_quality, points
from fps_profile.analysis.summary import format_summary
from fps_profile.plots.quality import accuracy_vs_fraction, accuracy_vs_memory
from fps_profile.plots.report import build_report
from fps_profile.rows.cell import Cell

ACC = {("fps", "k=1"): (0.70, 0.74, 0.72), ("fps", "k=2"): (0.78, 0.80, 0.79), ("gps", "k=1"): (0.75, 0.71, 0.73),
       (None, None): (0.90, 0.92, 0.91), ("head", None): (0.60, 0.62, 0.64), ("frozen", None): (0.2, 0.18, 0.22)}
SELECT_PEAK = {"fps": 1_000_000, "gps": 3_000_000}


def rows():
    out = []
    for (selector, budget), accs in ACC.items():
        for seed, acc in enumerate(accs):
            c = Cell(model="tiny", batch_size=8, phase="finetune", selector=selector, budget=budget or "k=1",
                     data="digits:5-9", seed=seed, steps=50, lr=0.01)
            r = c.empty_row(eval_accuracy=acc, eval_loss=1 - acc, train_loss_final=0.1, params_total=1000,
                            params_trainable=1000 if selector is None else 0 if selector == "frozen" else 100,
                            select_peak_bytes=SELECT_PEAK.get(selector), peak_allocated_bytes=2_000_000,
                            wall_time_s=0.01, wall_times_s=[0.01], examples_seen=400 if selector != "frozen" else 0,
                            env={"data": {"data": "digits:5-9", "data_classes": ["5", "6", "7", "8", "9"]}})
            out.append(r)
    return out


def test_points_are_means_and_sample_stds_over_seeds():
    groups = points(rows())
    assert len(groups) == 1  # frozen (no steps) joins the group of its model and data
    (group, ps), = groups.items()
    assert group.steps == 50 and group.data == "digits:5-9"
    by = {(p.series, p.budget): p for p in ps}
    assert set(by) == {("fps", "k=1"), ("fps", "k=2"), ("gps", "k=1"), ("full", None), ("head", None),
                       ("frozen", None)}
    for (selector, budget), accs in ACC.items():
        p = by[(selector or "full", budget)]
        assert p.accuracy == pytest.approx(statistics.fmean(accs), abs=1e-15)
        assert p.accuracy_std == pytest.approx(statistics.stdev(accs), abs=1e-15)
        assert p.seeds == [0, 1, 2]
    assert by[("fps", "k=1")].trainable_fraction == pytest.approx(0.1) and by[("fps", "k=1")].select_peak == 1e6
    text = format_quality(rows())
    assert "chance 20.0%" in text and "| fps    | k=2    | 0.01 | 79.0 ± 1.0 " in text


def test_the_gate_wants_accuracy_up():
    old = rows()
    worse = [r for r in rows()]
    worse[0].eval_accuracy -= 0.05  # 0.70 -> 0.65: -7%, beyond the 1% quality tolerance
    report = compare(old, worse)
    changes = [c for c in report.changes if c.metric == "eval_accuracy"]
    assert [c.verdict for c in changes] == ["worse"] and report.failed()
    better = rows()
    better[0].eval_accuracy += 0.05
    better[1].eval_loss -= 0.1
    report = compare(old, better)
    assert {c.metric: c.verdict for c in report.changes} == {"eval_accuracy": "better", "eval_loss": "better"}
    assert not report.failed()


def _gid_data(fig, gid):
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() == gid:
                return list(line.get_xdata()), list(line.get_ydata())
    raise AssertionError(f"no element {gid!r}")


def test_the_figures_plot_what_the_rows_say():
    fig = accuracy_vs_memory(rows())
    xs, ys = _gid_data(fig, "points:fps")
    assert ys == pytest.approx([72.0, 79.0]) and len(set(xs)) == 1  # one selection peak, two budgets
    _, full = _gid_data(fig, "baseline:full")
    assert full == pytest.approx([91.0, 91.0])  # a horizontal line at the mean
    xs, ys = _gid_data(accuracy_vs_fraction(rows()), "baseline:full")
    assert xs == pytest.approx([100.0]) and ys == pytest.approx([91.0])
    assert accuracy_vs_memory([r for r in rows() if r.selector in (None, "head", "frozen")]) is None  # no selection


def test_report_summary_and_explain_have_a_quality_section():
    rs = rows()
    report = build_report(rs)
    assert "## What a selection is worth" in report and "79.0 ± 1.0" in report
    assert "Selection (" not in report.split("## What a selection")[0]  # no memory tables of finetune rows
    assert "Fine-tuning quality" in format_summary(rs)
    fps = next(r for r in rs if r.selector == "fps" and r.budget == "k=2" and r.seed == 1)
    text = explain(fps)
    assert "fine-tuned 50 steps (400 examples, seed 1): held-out accuracy 80.00% (chance 20.0%)" in text
    assert "the selection that made the mask peaked at" in text
    assert "finetune:fps" in overview(rs) and "80.0%" in overview(rs)
