"""The gate on noisy times: a CPU's times are not gated by default, a GPU's only when the repeats differ
(asv's rule), and the report names the environment facts that differ between the files."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fps_profile.analysis.gate import compare
from fps_profile.analysis.noise import differ, median_interval
from fps_profile.cli import main
from fps_profile.rows.result import Result
from fps_profile.rows.store import read_results
from plotrows import write_results

ENV = {"torch": "2.14.1", "timm": "1.0.31", "fps_profile": "0.1.0", "device_name": "Test"}


def _row(device: str, times: list[float], **kw) -> Result:
    kw = {"peak_allocated_bytes": 1000, **kw}
    return Result(selector="fps", model="test_vit", batch_size=1, dtype="float32", device=device, phase="select",
                  budget="k=1", wall_times_s=times, wall_time_s=sorted(times)[len(times) // 2], env=dict(ENV), **kw)


def _gate(capsys, tmp_path, old: list[Result], new: list[Result], *flags):
    write_results(tmp_path / "a.jsonl", old)
    write_results(tmp_path / "b.jsonl", new)
    code = main(["gate", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), *flags])
    return code, capsys.readouterr().out


def test_cpu_time_is_not_gated_by_default_and_says_so(tmp_path, capsys):
    old, new = _row("cpu", [0.010, 0.011, 0.012]), _row("cpu", [0.030, 0.031, 0.032])  # 3x slower, no overlap
    code, out = _gate(capsys, tmp_path, [old], [new])
    assert code == 0 and "gate: PASS" in out
    assert "Time not gated on cpu (1 cells): wall times on a CPU are noise" in out
    assert "wall_time_s" not in out.split("Time not gated")[0]  # not in the table either
    code, out = _gate(capsys, tmp_path, [old], [new], "--metric", "time")  # asked for by name: gated
    assert code == 1 and "**WORSE**" in out and "Time not gated" not in out


def test_cpu_memory_is_still_gated(tmp_path, capsys):
    old, new = _row("cpu", [0.01, 0.01]), _row("cpu", [0.01, 0.01], peak_allocated_bytes=1100)
    code, out = _gate(capsys, tmp_path, [old], [new])
    assert code == 1 and "| peak_allocated_bytes |" in out and "**WORSE**" in out


def test_gpu_time_worse_only_when_repeats_do_not_overlap(tmp_path, capsys):
    old = _row("cuda", [0.010, 0.010, 0.030])
    overlapping = _row("cuda", [0.012, 0.020, 0.021])  # median 2x, but inside the baseline's range
    code, out = _gate(capsys, tmp_path, [old], [overlapping])
    assert code == 0 and "within noise (+100.0% > 10%" in out
    apart = _row("cuda", [0.031, 0.032, 0.033])
    code, out = _gate(capsys, tmp_path, [old], [apart])
    assert code == 1 and "**WORSE** (+220.0% > 10%)" in out
    # the ratio still decides when the repeats differ but the change is within tolerance
    close = _row("cuda", [0.0105, 0.0105, 0.0105])
    assert _gate(capsys, tmp_path, [_row("cuda", [0.0100, 0.0100, 0.0100])], [close])[0] == 0


def test_single_repeat_falls_back_to_the_ratio():
    # nothing to test with one sample (asv does the same): the tolerance alone decides
    report = compare([_row("cuda", [0.01])], [_row("cuda", [0.02])])
    assert [c.verdict for c in report.changes] == ["worse"]


def test_median_interval_by_hand():
    # [x_(j), x_(n+1-j)] covers the median with 1 - 2 P(B <= j-1), B ~ Binomial(n, 1/2)
    three = [3.0, 1.0, 2.0]
    assert median_interval(three) == (1.0, 3.0)  # 75% at most: the whole range
    nine = [float(i) for i in range(9)]
    assert median_interval(nine) == (0.0, 8.0)  # j=1: 1 - 2/512 = 0.996; j=2: 1 - 20/512 = 0.961 < 0.99
    twenty = [float(i) for i in range(20)]
    # j=4: P(B <= 3) = (1 + 20 + 190 + 1140) / 2^20 = 0.00129 -> 0.9974; j=5 adds C(20,4) = 4845 -> 0.988
    assert 1 - 2 * (1 + 20 + 190 + 1140) / 2**20 >= 0.99 > 1 - 2 * (1 + 20 + 190 + 1140 + 4845) / 2**20
    assert median_interval(twenty) == (3.0, 16.0)
    assert differ([1, 2], [2, 3]) is False and differ([1, 2], [3, 4]) is True and differ([1], [5, 6]) is None
    assert not math.isnan(median_interval([0.5])[0])


def test_environment_differences_are_named(tmp_path, capsys):
    old = _row("cuda", [0.01, 0.01])
    new = dataclasses.replace(old, env={**ENV, "torch": "2.15.0", "device_name": "Other GPU", "host": "b"})
    code, out = _gate(capsys, tmp_path, [old], [new])
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("Environments differ"))
    assert "torch: 2.14.1 (BASELINE) vs 2.15.0 (CURRENT)" in line
    assert "cuda device name: Test (BASELINE) vs Other GPU (CURRENT)" in line
    assert "timm" not in line and "host" not in line  # the same, or not a fact the gate names
    code, out = _gate(capsys, tmp_path, [old], [old])
    assert "Environments differ" not in out


@pytest.mark.slow
def test_two_identical_tiny_cpu_sweeps_pass(tmp_path, capsys):
    """Real rows: two identical sweeps on this (shared, noisy) CPU gate PASS with the defaults."""
    argv = ["sweep", "--no-progress", "--model", "test_vit", "--batch-size", "1", "--selector", "fps,magnitude",
            "--phase", "select,inference", "--repeats", "3"]
    for name in ("a", "b"):
        assert main([*argv, "--out", str(tmp_path / f"{name}.jsonl")]) == 0
    capsys.readouterr()
    rows = read_results(tmp_path / "a.jsonl")
    assert len(rows) == 3 and all(len(r.wall_times_s) == 3 for r in rows)
    code = main(["gate", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    out = capsys.readouterr().out
    assert code == 0 and "gate: PASS" in out and "Time not gated on cpu (3 cells)" in out
    assert "peak_allocated_bytes" not in out  # the exact peak of live tensor bytes repeats to the byte
