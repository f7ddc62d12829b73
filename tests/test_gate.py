"""``fps-profile gate``: identical files pass, regressions fail, bad files error cleanly."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fps_profile.cli import main
from fps_profile.analysis.gate import DEFAULT_TOLERANCES, compare, parse_tolerance, select_metrics
from fps_profile.rows.result import Result
from plotrows import write_results


def _rows() -> list[Result]:
    """A small baseline: sim rows (deterministic) and cuda rows (measured; a GPU's times are gated,
    a CPU's are noise: see test_gate_noise.py)."""
    rows = []
    for i, sel in enumerate(("fps", "gps")):
        rows.append(Result(selector=sel, model="vit_tiny_patch16_224", batch_size=1, dtype="float32",
                           device="sim", phase="select", budget="k=1", peak_allocated_bytes=10_000_000 * (i + 1),
                           flops=2_000_000_000 * (i + 1), time_floor_s=0.001 * (i + 1), params_total=5_700_000,
                           params_trainable=40_000, env={"host": "a"}))
        rows.append(Result(selector=sel, model="vit_tiny_patch16_224", batch_size=1, dtype="float32",
                           device="cuda", phase="select", budget="k=1", peak_allocated_bytes=30_000_000 * (i + 1),
                           rss_peak_bytes=500_000_000, wall_time_s=0.05 * (i + 1), wall_times_s=[0.05 * (i + 1)],
                           params_total=5_700_000, params_trainable=40_000, env={"host": "a"}))
    rows.append(Result(selector=None, model="vit_tiny_patch16_224", batch_size=1, dtype="float32", device="sim",
                       phase="inference", peak_allocated_bytes=9_000_000, flops=1_000_000_000,
                       env={"host": "a"}))
    return rows


def _write(path, rows):
    write_results(path, rows)
    return str(path)


def _changed(rows, index, **fields):
    out = [dataclasses.replace(r) for r in rows]
    out[index] = dataclasses.replace(out[index], **fields)
    return out


def _gate(capsys, *argv):
    code = main(["gate", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_files_pass(tmp_path, capsys):
    base = _write(tmp_path / "base.jsonl", _rows())
    cur = _write(tmp_path / "cur.jsonl", _rows())
    code, out, _ = _gate(capsys, base, cur)
    assert code == 0
    assert "No metric changed" in out and "gate: PASS" in out
    assert "in 5 cells" in out


def test_env_is_not_compared(tmp_path, capsys):
    rows = _rows()
    other = [dataclasses.replace(r, env={"host": "b", "torch": "9"}, timestamp="2000-01-01") for r in rows]
    code, out, _ = _gate(capsys, _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", other))
    assert code == 0, out


@pytest.mark.parametrize("index,metric,factor", [
    (0, "peak_allocated_bytes", 1.05),  # sim bytes: exact
    (2, "flops", 1.05),
    (2, "time_floor_s", 1.05),
    (1, "peak_allocated_bytes", 1.06),  # measured memory: 5% tolerance
    (3, "wall_time_s", 1.11),  # time: 10% tolerance
])
def test_injected_regression_fails(tmp_path, capsys, index, metric, factor):
    rows = _rows()
    old = getattr(rows[index], metric)
    new = type(old)(old * factor)
    base = _write(tmp_path / "base.jsonl", rows)
    cur = _write(tmp_path / "cur.jsonl", _changed(rows, index, **{metric: new}))
    code, out, _ = _gate(capsys, base, cur)
    assert code == 1, out
    assert "gate: FAIL" in out and "1 worse beyond tolerance" in out
    lines = [ln for ln in out.splitlines() if "**WORSE**" in ln]
    assert len(lines) == 1 and f"| {metric} |" in lines[0]
    assert f"{new / old:.4f}" in lines[0]


def test_five_percent_on_one_sim_metric_fails_and_names_the_cell(tmp_path, capsys):
    rows = _rows()
    cur = _changed(rows, 0, peak_allocated_bytes=10_500_000)
    code, out, _ = _gate(capsys, _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", cur))
    assert code == 1
    assert "| vit_tiny_patch16_224 b=1 float32 sim fps | peak_allocated_bytes |" in out
    assert "1.0500" in out and "+5.0% > 0%" in out


def test_within_tolerance_is_listed_but_passes(tmp_path, capsys):
    rows = _rows()
    cur = _changed(rows, 1, wall_time_s=0.052)  # +4% < 10%
    code, out, _ = _gate(capsys, _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", cur))
    assert code == 0
    assert "| wall_time_s |" in out and "within tolerance" in out
    code, out, _ = _gate(capsys, tmp_path / "b.jsonl", tmp_path / "c.jsonl", "--tolerance", "time=3%")
    assert code == 1 and "+4.0% > 3%" in out


def test_improvement_passes(tmp_path, capsys):
    rows = _rows()
    cur = _changed(rows, 2, peak_allocated_bytes=15_000_000, flops=3_000_000_000)
    cur = _changed(cur, 3, wall_time_s=0.05)
    code, out, _ = _gate(capsys, _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", cur))
    assert code == 0, out
    assert out.count("better (") == 3 and "0.7500" in out


def test_status_regression_fails_and_recovery_passes(tmp_path, capsys):
    rows = _rows()
    broken = _changed(rows, 0, status="oom", peak_allocated_bytes=None, flops=None, error="OutOfMemoryError")
    b, c = _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", broken)
    code, out, _ = _gate(capsys, b, c)
    assert code == 1 and "| status | ok | oom |" in out
    code, out, _ = _gate(capsys, c, b)
    assert code == 0 and "| status | oom | ok |" in out


def test_cells_in_one_file_are_listed(tmp_path, capsys):
    rows = _rows()
    extra = dataclasses.replace(rows[0], selector="random")
    b = _write(tmp_path / "b.jsonl", rows)
    c = _write(tmp_path / "c.jsonl", rows[1:] + [extra])
    code, out, _ = _gate(capsys, b, c)
    assert code == 0
    assert "Cells only in BASELINE (not measured in CURRENT): 1\n- vit_tiny_patch16_224 b=1 float32 sim fps\n" in out
    assert "Cells only in CURRENT (not in BASELINE): 1\n- vit_tiny_patch16_224 b=1 float32 sim random\n" in out
    code, out, _ = _gate(capsys, b, c, "--strict")
    assert code == 1 and "gate: FAIL" in out


def test_metric_that_disappears_is_listed_and_fails_when_strict(tmp_path, capsys):
    rows = _rows()
    b = _write(tmp_path / "b.jsonl", rows)
    c = _write(tmp_path / "c.jsonl", _changed(rows, 0, flops=None))
    code, out, _ = _gate(capsys, b, c)
    assert code == 0 and "missing in CURRENT" in out
    assert _gate(capsys, b, c, "--strict")[0] == 1


def test_counts_are_shown_not_gated(tmp_path, capsys):
    rows = _rows()
    cur = _changed(rows, 0, params_trainable=80_000)
    code, out, _ = _gate(capsys, _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", cur))
    assert code == 0 and "| params_trainable |" in out and "changed" in out


def test_metric_filter(tmp_path, capsys):
    rows = _rows()
    cur = _changed(rows, 1, rss_peak_bytes=900_000_000)
    b, c = _write(tmp_path / "b.jsonl", rows), _write(tmp_path / "c.jsonl", cur)
    assert _gate(capsys, b, c)[0] == 1
    code, out, _ = _gate(capsys, b, c, "--metric", "exact,peak_allocated_bytes")
    assert code == 0 and "rss_peak_bytes" not in out


def test_newest_row_of_a_key_wins(tmp_path, capsys):
    rows = _rows()
    stale = dataclasses.replace(rows[0], peak_allocated_bytes=1)
    b = _write(tmp_path / "b.jsonl", rows)
    c = _write(tmp_path / "c.jsonl", [stale] + rows)  # resumed sweep: the later row replaces the first
    assert _gate(capsys, b, c)[0] == 0


def test_report_written_to_out(tmp_path, capsys):
    rows = _rows()
    b = _write(tmp_path / "b.jsonl", rows)
    code, out, _ = _gate(capsys, b, b, "--out", tmp_path / "summary.md")
    assert code == 0 and (tmp_path / "summary.md").read_text().strip() == out.strip()


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    ("not json\n", "not a valid results row"),
    ('{"schema": "other/1", "model": "m"}\n', "schema"),
    ('{"schema": "fps-profile/results/1", "model": "m"}\n', "missing field"),
    ("", "holds no result rows"),
])
@pytest.mark.parametrize("which", ["baseline", "current"])
def test_bad_files_error_cleanly(tmp_path, capsys, content, needle, which):
    good = _write(tmp_path / "good.jsonl", _rows())
    bad = tmp_path / "bad.jsonl"
    if content is not None:
        bad.write_text(content)
    argv = (bad, good) if which == "baseline" else (good, bad)
    code, out, err = _gate(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fps-profile: error: ") and needle in lines[0]


@pytest.mark.parametrize("spec", ["abc", "-5%", "nan", "bogus=5%", "params_total=1%", "5", "0.05", "time=10"])
def test_bad_tolerance_is_a_user_error(tmp_path, capsys, spec):
    good = _write(tmp_path / "good.jsonl", _rows())
    code, out, err = _gate(capsys, good, good, f"--tolerance={spec}")
    assert code == 2 and err.startswith("fps-profile: error: ") and len(err.strip().splitlines()) == 1


def test_parse_tolerance_forms():
    tol = dict(DEFAULT_TOLERANCES)
    parse_tolerance("20%", tol)
    assert tol == {"exact": 0.0, "memory": 0.2, "time": 0.2, "quality": 0.01}  # a bare value sets the measured costs
    parse_tolerance("exact=1%", tol)
    parse_tolerance("wall_time_s=50%", tol)
    assert tol["exact"] == 0.01 and tol["wall_time_s"] == 0.5


def test_per_metric_tolerance_beats_kind():
    rows = _rows()
    cur = _changed(rows, 3, wall_time_s=0.13)  # +30%
    assert compare(rows, cur).failed()
    assert not compare(rows, cur, {"wall_time_s": 0.5}).failed()


def test_select_metrics_expands_kinds():
    assert select_metrics(["exact"]) == {"flops", "time_floor_s", "peak_allocated_bytes", "peak_reserved_bytes",
                                         "select_peak_bytes", "host_peak_bytes"}
    assert select_metrics(["time"]) == {"wall_time_s"}


def test_zero_baseline_growing_is_worse():
    rows = _rows()
    base = _changed(rows, 0, peak_allocated_bytes=0)
    report = compare(base, rows)
    assert [c.metric for c in report.worse] == ["peak_allocated_bytes"]


def test_rows_written_by_json_roundtrip_compare_equal(tmp_path):
    rows = _rows()
    path = tmp_path / "r.jsonl"
    write_results(path, rows)
    again = [Result.from_dict(json.loads(line)) for line in path.read_text().splitlines()]
    assert compare(rows, again).changes == []


# The committed baseline (benchmarks/baseline.jsonl) and its grid (benchmarks/baseline.toml).

def _baseline():
    from pathlib import Path

    from fps_profile.rows.store import read_results

    root = Path(__file__).resolve().parents[1]
    return root, read_results(root / "benchmarks" / "baseline.jsonl")


def test_baseline_matches_its_grids():
    """benchmarks/baseline.jsonl holds exactly the cells of benchmarks/baseline*.toml, as gate.sh sweeps them."""
    import tomllib

    from fps_profile.run.grid import Grid

    root, rows = _baseline()
    grids = [Grid(**tomllib.loads(p.read_text())) for p in sorted((root / "benchmarks").glob("baseline*.toml"))]
    assert len(grids) >= 3 and all(g.devices == ["sim"] for g in grids)
    keys = [c.key() for g in grids for c in g.cells()]
    assert len(set(keys)) == len(keys)
    assert sorted(map(repr, keys)) == sorted(map(repr, (r.key() for r in rows)))
    assert all(r.status == "ok" and r.peak_allocated_bytes and r.flops is not None for r in rows)
    assert {r.selector for r in rows if r.phase == "select"} >= {"fps", "gps"}
    # the knobs of the strongest baselines and a language model are gated too
    assert any(r.checkpointing and r.amp and r.micro_batch and r.selector == "gps" for r in rows)
    assert any(r.model.startswith("hf:") and r.seq_len and r.selector == "gps" for r in rows)


def test_baseline_gates_an_injected_regression(tmp_path, capsys):
    root, rows = _baseline()
    i = next(i for i, r in enumerate(rows) if r.selector == "gps" and r.phase == "select")
    worse = _changed(rows, i, peak_allocated_bytes=int(rows[i].peak_allocated_bytes * 1.05))
    base = str(root / "benchmarks" / "baseline.jsonl")
    assert _gate(capsys, base, base, "--strict")[0] == 0
    code, out, _ = _gate(capsys, base, _write(tmp_path / "cur.jsonl", worse), "--strict")
    assert code == 1 and out.count("**WORSE**") == 1 and " sim gps |" in out


@pytest.mark.slow
def test_sim_measurement_reproduces_the_baseline(tmp_path, capsys):
    """What CI's gate does, on one cell: measure it now and compare with the committed row."""
    from fps_profile.rows.cell import Cell
    from fps_profile.measure.runner import measure

    _, rows = _baseline()
    old = next(r for r in rows if r.selector == "fps" and r.phase == "select" and r.batch_size == 1
               and r.model == "vit_tiny_patch16_224")
    new = measure(Cell(model=old.model, batch_size=1, phase="select", selector="fps", device="sim",
                       budget=old.budget, scope=old.scope, warmup=0, repeats=1))
    report = compare([old], [new])
    assert report.cells == 1 and report.changes == [], report.changes
