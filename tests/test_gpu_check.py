"""scripts/gpu_check.sh --dry-run: the GPU check's own steps on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fps_profile.rows.store import read_results
from fps_profile.analysis.compare import match_key

ROOT = Path(__file__).resolve().parents[1]
FILES = {"measured.jsonl", "sim.jsonl", "report.md", "env.json", "probes.json", "pytest.log", "figure.png",
         "check.log"}


@pytest.mark.slow
def test_dry_run_writes_the_files_and_a_passing_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # flat, at most 8 files
    measured, sim = read_results(out / "measured.jsonl"), read_results(out / "sim.jsonl")
    assert {r.device for r in measured} == {"cpu"} and {r.device for r in sim} == {"sim:cpu"}
    # the same grid on both: floor, FPS, full and sparse steps, GPS both ways, batch 1 and 2
    by_cell = {repr(match_key(r)): r for r in measured}
    assert sorted(by_cell) == sorted(repr(match_key(r)) for r in sim)
    assert len(measured) == 12 and all(r.status == "ok" for r in measured + sim)
    assert {r.variant for r in measured if r.phase == "select"} == {"fps", "gps", "gps[loss=ce,views=1]"}
    assert all(by_cell[repr(match_key(s))].peak_allocated_bytes == s.peak_allocated_bytes for s in sim)  # exact
    report = (out / "report.md").read_text()
    assert "**PASS**" in report and "dry run on the CPU" in report
    for heading in ("## Headline", "## FPS and GPS on this device", "## Sim vs measured (12 cells: median |error| "
                    "0.0%, worst 0.0%)", "## NVML vs allocator", "## Reduction scratch"):
        assert heading in report
    assert "gps[loss=ce,views=1]" in report and "GPS (CE, 1 view)" in report  # the series and its name
    assert '"nearly 9x"' in report and '"about 2x"' in report
    assert "skipped" in (out / "pytest.log").read_text()
    probes = json.loads((out / "probes.json").read_text())
    assert {p["op"] for p in probes} == {"norm1", "sum", "chunked"}
    assert all(p["scratch_bytes"] == 0 for p in probes if p["op"] != "chunked")  # no scratch on the CPU
    env_json = json.loads((out / "env.json").read_text())
    assert env_json["requirements"] == "all met" and env_json["git_commit"]
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gpu-check: PASS" in (out / "check.log").read_text()


def test_bad_usage_exits_2(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage: scripts/gpu_check.sh [--dry-run] OUTDIR" in proc.stderr


def test_requirements_are_checked_one_line_each():
    from fps_profile.gpucheck.plan import check_requirements

    assert check_requirements(["torch>=2.0", "pytest"]) == []
    problems = check_requirements(["no-such-package-xyz>=1", "torch<1.0"])
    assert problems[0] == "missing: no-such-package-xyz (import no_such_package_xyz); needed: no-such-package-xyz>=1"
    assert problems[1].startswith("version: torch ") and problems[1].endswith("does not satisfy torch<1.0")


def test_grid_parsing_and_plan():
    from fps_profile.gpucheck.plan import grids, parse_grid

    grid = parse_grid("float32:a,b bfloat16:a")
    assert grid == [("float32", ["a", "b"]), ("bfloat16", ["a"])]
    with pytest.raises(ValueError, match="dtype:model"):
        parse_grid("float32")
    cells = [c for g in grids("cuda", grid, [1, 64]) for c in g.cells()]
    # per model, dtype and batch: floor, FPS, full step, FPS-sparse step, GPS, GPS-CE
    assert len(cells) == 3 * 2 * 6
    assert [c.dtype for c in cells][:24] == ["float32"] * 24  # float32 first
    assert sum(c.options == (("loss", "ce"), ("views", 1)) for c in cells) == 3 * 2
