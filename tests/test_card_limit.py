"""A predicted peak above the card is an ``oom`` that keeps its peak, and every reader treats it so
(issue 26, item 3)."""

from __future__ import annotations

import dataclasses

import pytest

from fps_profile.analysis import frontier
from fps_profile.analysis.explain import explain
from fps_profile.analysis.gate import compare as gate
from fps_profile.analysis.summary import format_summary
from fps_profile.measure import targets
from fps_profile.measure.runner import measure
from fps_profile.plots.memory import memory_vs_batch
from fps_profile.plots.report import build_report
from fps_profile.rows.cell import Cell
from fps_profile.rows.result import Result
from fps_profile.rows.store import read_results
from fps_profile.run.maxbatch import find_max_batch
from fps_profile.sim.backend import SimBackend
from plotrows import write_results

GiB = 1024**3
CARD = 80 * GiB


def _cell(batch=2, **kw) -> Cell:
    return Cell(model="test_vit", batch_size=batch, phase="inference", device="sim:h100", **kw)


@pytest.fixture(scope="module")
def plain():
    """The row of a small cell on the real H100 target: far below its card."""
    row = measure(_cell())
    assert row.status == "ok", row.error
    return row


def _card(monkeypatch, memory_bytes):
    monkeypatch.setitem(targets.TARGETS, "h100", dataclasses.replace(targets.TARGETS["h100"],
                                                                      memory_bytes=memory_bytes))


def test_a_peak_above_the_card_is_oom_and_keeps_the_prediction(monkeypatch, plain):
    _card(monkeypatch, plain.peak_allocated_bytes - 1)
    row = measure(_cell())
    assert row.status == "oom"
    assert "predicted out of memory on sim:h100" in row.error and "the card's" in row.error
    assert f"{plain.peak_allocated_bytes:,} bytes" in row.error
    # every predicted figure stays: the peak it needed, its breakdown, FLOPs and floor
    for field in ("peak_allocated_bytes", "peak_breakdown_bytes", "flops", "time_floor_s", "params_total"):
        assert getattr(row, field) == getattr(plain, field), field
    assert row.env["device_memory_bytes"] == plain.peak_allocated_bytes - 1


def test_a_budget_below_the_card_is_judged_the_same_way(plain):
    row = measure(_cell(memory_budget=plain.peak_allocated_bytes - 1))
    assert row.status == "oom" and "the budget of" in row.error
    assert row.peak_allocated_bytes == plain.peak_allocated_bytes
    assert measure(_cell(memory_budget=plain.peak_allocated_bytes)).status == "ok"


def test_sim_cpu_has_no_card_limit(plain):
    assert SimBackend().memory_bytes("sim:cpu") is None
    row = measure(dataclasses.replace(_cell(), device="sim:cpu"))
    assert row.status == "ok" and not row.env.get("device_memory_bytes")
    assert measure(dataclasses.replace(_cell(memory_budget=row.peak_allocated_bytes - 1),
                                       device="sim:cpu")).status == "oom"


def test_max_batch_on_the_card_finds_the_largest_batch_within_it(monkeypatch, plain):
    card = 3 * plain.peak_allocated_bytes  # a few samples fit
    _card(monkeypatch, card)
    res = find_max_batch(lambda b: measure(_cell(b)), card, start=64)
    assert res.error is None and res.max_batch and res.first_oom == res.max_batch + 1
    over = measure(_cell(res.first_oom))
    assert over.status == "oom" and over.peak_allocated_bytes > card  # an oom probe, with what it needed
    assert res.peak_bytes <= card


# -- readers -------------------------------------------------------------------------------------------------------

def _sim_row(selector, batch, peak, *, status="ok", phase="select", memory=CARD, error=None) -> Result:
    return Result(selector=selector, model="vit_base_patch16_224", batch_size=batch, dtype="float32",
                  device="sim:h100", phase=phase, status=status, peak_allocated_bytes=peak, error=error,
                  params_total=86_000_000, time_floor_s=0.001 * batch, flops=10**9 * batch,
                  env={"device_name": "NVIDIA H100 (simulated)", "device_memory_bytes": memory})


def test_an_old_ok_row_above_its_device_reads_as_oom_and_the_file_is_untouched(tmp_path):
    path = tmp_path / "old.jsonl"
    write_results(path, [_sim_row("gps", 512, 106 * GiB), _sim_row("fps", 512, 20 * GiB),
                         _sim_row("gps", 1, 30 * GiB, memory=None)])
    before = path.read_bytes()
    gps, fps, unknown = read_results(path)
    assert gps.status == "oom" and gps.peak_allocated_bytes == 106 * GiB
    assert "over the device's 80.0 GiB" in gps.error and "read as oom" in gps.error
    assert fps.status == "ok" and fps.error is None
    assert unknown.status == "ok"  # no device memory recorded: nothing to judge against
    assert path.read_bytes() == before


def _readers_rows():
    rows = []
    for b, gps_peak in ((64, 40 * GiB), (128, 79 * GiB), (256, 106 * GiB)):
        rows.append(_sim_row("fps", b, b * GiB // 64))
        status = "oom" if gps_peak > CARD else "ok"
        rows.append(_sim_row("gps", b, gps_peak, status=status,
                             error="predicted out of memory on sim:h100" if status == "oom" else None))
        rows.append(_sim_row(None, b, b * GiB // 100, phase="inference"))
    return rows


def test_summary_and_report_show_oom_with_the_peak_it_needed():
    rows = _readers_rows()
    table = format_summary(rows, reference="fps")
    assert "OOM (needs 106.0 GiB)" in table
    report = build_report(rows)
    assert "OOM (needs 106.0 GiB)" in report
    assert "1 oom" in report
    headline = next(line for line in report.splitlines() if line.startswith("| sim:h100") or "| GPS" in line
                    or "| gps" in line)
    assert "256 / -" in headline  # GPS out of memory from batch 256, FPS never
    assert "OOM" in explain(rows[7]) and "106.0 GiB" in explain(rows[7])


def test_plots_mark_the_oom_and_draw_no_point_for_it():
    fig = memory_vs_batch(_readers_rows())
    ax = fig.axes[0]
    gps = next(ln for ln in ax.get_lines() if ln.get_gid() == "gps")
    assert list(gps.get_xdata()) == [64, 128]
    cross = next(ln for ln in ax.get_lines() if ln.get_gid() == "oom:gps")
    assert list(cross.get_xdata()) == [256]


def test_frontier_leaves_the_oom_out_and_notes_budgets_above_the_card():
    (panel,) = frontier.panels(_readers_rows())
    assert {(p.selector, p.setting.batch_size) for p in panel.points if p.selector == "gps"} == {("gps", 64),
                                                                                                 ("gps", 128)}
    assert [r.batch_size for r in panel.ooms] == [256]
    best = {c["memory_bytes"]: c["batch_size"] for c in frontier.choices(panel, (141 * GiB,)) if c["selector"] == "gps"}
    assert best == {141 * GiB: 64}  # the fastest that fits the card; the 106 GiB row does not
    text = frontier.markdown([panel], budgets=(24 * GiB, 141 * GiB))
    assert "sim:h100 has 80.0 GiB: the columns above it (141 GiB)" in text


def test_gate_fails_ok_to_oom_and_reads_old_rows_as_oom(tmp_path):
    old, new = _sim_row("gps", 256, 70 * GiB), _sim_row("gps", 256, 90 * GiB, status="oom", error="x")
    report = gate([old], [new])
    assert [(c.metric, c.verdict) for c in report.changes] == [("status", "worse")] and report.failed()
    # a baseline written as ok above its card is the same oom as a new prediction of it
    write_results(tmp_path / "base.jsonl", [_sim_row("gps", 256, 90 * GiB)])
    report = gate(read_results(tmp_path / "base.jsonl"), [new])
    assert not report.changes and not report.failed()


def test_sim_against_measured_compares_a_predicted_oom_too():
    from fps_profile.analysis.compare import compare as against

    measured = [dataclasses.replace(_sim_row("gps", b, p), device="cuda")
                for b, p in ((128, 70 * GiB), (256, 75 * GiB))]
    measured += [dataclasses.replace(_sim_row("fps", 256, None, status="oom"), device="cuda"),
                 dataclasses.replace(_sim_row("fps", 128, 2 * GiB), device="cuda")]
    predicted = [_sim_row("gps", 128, 77 * GiB), _sim_row("gps", 256, 84 * GiB, status="oom", error="x"),
                 _sim_row("fps", 256, 3 * GiB), _sim_row("fps", 128, None, status="oom")]  # an old oom: no peak
    table, errors = against(measured, predicted)
    assert errors == pytest.approx([10.0, 12.0])  # 77/70 - 1, 84/75 - 1: the over-prediction is not hidden
    assert "84.0 GiB (OOM)" in table and "predicted OOM" in table and "measured OOM" in table


class _InProcess:
    """An executor that measures here, so a patched target holds."""

    remote = False

    def run(self, cells, timeout_s):
        for cell in cells:
            yield measure(cell)


def test_max_batch_budget_above_the_card_is_the_card(monkeypatch, plain, tmp_path):
    from fps_profile.run.grid import Grid
    from fps_profile.run.maxbatch import search_grid

    card = 3 * plain.peak_allocated_bytes
    _card(monkeypatch, card)
    grid = Grid(models=["test_vit"], batch_sizes=[1], phases=["inference"], devices=["sim:h100"],
                memory_budget=1 << 40)
    (found,) = search_grid(grid, tmp_path / "r.jsonl", _InProcess())
    assert found.budget_bytes == card  # a 1 TiB budget cannot hold on a card of `card` bytes
    assert found.result.max_batch and found.result.peak_bytes <= card
    over = next(r for r in read_results(tmp_path / "r.jsonl") if r.batch_size == found.result.first_oom)
    assert over.status == "oom" and over.peak_allocated_bytes > card
