"""The max-batch search finds the largest fitting batch whatever batch it starts from (issue 26, item 4)."""

from __future__ import annotations

import pytest

from fps_profile.cli import main
from fps_profile.rows.result import Result
from fps_profile.rows.store import read_results
from fps_profile.run.maxbatch import find_max_batch

BUDGET = 1000


def fake_measure(largest: int, *, over_as_ok: bool = False, calls: list | None = None):
    """Rows of a batch whose peak is 10 bytes per sample above a fixed part, so that ``largest`` is
    the largest batch within :data:`BUDGET`; larger batches are ``oom`` rows, or ``ok`` rows whose peak
    is over the budget (``over_as_ok``: a device that does not stop at the budget)."""
    base = BUDGET - 10 * largest

    def measure(batch: int) -> Result:
        if calls is not None:
            calls.append(batch)
        peak = base + 10 * batch
        status = "ok" if peak <= BUDGET or over_as_ok else "oom"
        return Result(selector="fps", model="m", batch_size=batch, dtype="float32", device="cpu", phase="select",
                      status=status, peak_allocated_bytes=peak if status == "ok" else None)

    return measure


@pytest.mark.parametrize("over_as_ok", [False, True])
def test_every_start_finds_the_largest_fitting_batch(over_as_ok):
    cap = 64
    for largest in range(0, cap + 3):
        for start in range(1, cap + 3):
            calls: list[int] = []
            res = find_max_batch(fake_measure(largest, over_as_ok=over_as_ok, calls=calls), BUDGET, start=start,
                                 cap=cap)
            where = f"largest {largest}, start {start}"
            assert res.error is None, where
            assert res.max_batch == (min(largest, cap) or None), where
            assert res.first_oom == (largest + 1 if largest < cap else None), where
            if res.max_batch:
                assert res.peak_bytes == BUDGET - 10 * (largest - res.max_batch), where
            assert calls == res.probes and len(set(calls)) == len(calls), where  # nothing probed twice
            assert all(1 <= b <= cap for b in calls), where


def test_a_start_above_the_largest_batch_goes_down_to_it():
    # the case: --batch-size 2 and only batch 1 fits
    res = find_max_batch(fake_measure(1), BUDGET, start=2)
    assert (res.max_batch, res.first_oom, res.probes) == (1, 2, [2, 1])
    # nothing fits at all
    res = find_max_batch(fake_measure(0), BUDGET, start=8)
    assert (res.max_batch, res.first_oom, res.probes) == (None, 1, [8, 4, 2, 1])


def test_a_failed_probe_stops_the_search_with_its_error():
    def measure(batch):
        status = "error" if batch == 2 else "oom"
        return Result(selector="fps", model="m", batch_size=batch, dtype="float32", device="cpu", phase="select",
                      status=status, error="boom" if status == "error" else None)

    res = find_max_batch(measure, BUDGET, start=4)
    assert res.error == "batch 2: error: boom" and res.max_batch is None and res.probes == [4, 2]


def _max_batch_table(capsys, out, start: int) -> dict[str, str]:
    rc = main(["sweep", "--no-progress", "--max-batch", "--memory-budget", "12MiB", "--selector", "gps",
               "--model", "test_vit", "--phase", "select", "--batch-size", str(start), "--repeats", "1",
               "--out", str(out)])
    assert rc == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "select:gps" in x or "| gps" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    return {"max": cells[4], "note": cells[7]}


def test_a_real_sweep_finds_the_same_batch_from_above(tmp_path, capsys):
    up = _max_batch_table(capsys, tmp_path / "up.jsonl", 1)
    best = int(up["max"])
    rows = read_results(tmp_path / "up.jsonl")
    assert any(r.batch_size == best + 1 and r.status == "oom" for r in rows)
    start = 4 * best + 3  # well above it, and no power of two times it
    down = _max_batch_table(capsys, tmp_path / "down.jsonl", start)
    assert down == up, (down, up)
    probes = [r.batch_size for r in read_results(tmp_path / "down.jsonl")]
    assert probes[0] == start and min(probes) < best + 1 <= max(probes)
