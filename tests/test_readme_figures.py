"""The README's main-job excerpt quotes the committed reference rows, to the printed digit.

Memory on the CPU tracker is exact and repeats to the byte, so every peak the excerpt shows
(its progress line and its summary tables) must be what ``results/reference-cpu.jsonl``
holds for that cell, formatted as the sweep prints it. Times are noisy and not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

from fps_profile.rows.label import describe, model_label, series
from fps_profile.rows.store import read_results
from fps_profile.units import fmt_bytes

ROOT = Path(__file__).resolve().parents[1]


def excerpt() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("```\n", text.index("An excerpt, written"))
    return text[start + 4:text.index("```", start + 4)].splitlines()


def reference() -> list:
    return read_results(ROOT / "results" / "reference-cpu.jsonl")


def test_every_peak_in_the_excerpt_is_the_committed_row():
    rows = reference()
    quoted = 0
    for line in excerpt():
        progress = re.match(r"\[\d+/\d+ [^\]]*\] (.*?)  peak (\S+ \S+)", line)
        if progress:
            label, peak = progress.groups()
            match = [r for r in rows if describe(r) == label]
            assert len(match) == 1, line
            assert fmt_bytes(match[0].peak_allocated_bytes) == peak, line
            quoted += 1
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[1].isdigit():  # headers, separators, elisions
            continue
        model, batch, what, peak = cells[:4]
        match = [r for r in rows if model_label(r) == model and r.batch_size == int(batch) and series(r) == what]
        assert len(match) == 1, line
        assert fmt_bytes(match[0].peak_allocated_bytes) == peak, line
        quoted += 1
    assert quoted >= 10  # the excerpt quotes figures (a change of its format must not empty this test)


def test_the_reference_rows_are_the_main_job():
    rows = reference()
    assert rows and all(r.status == "ok" and r.device == "cpu" for r in rows)
    summary = next(line for line in excerpt() if " measured, " in line)
    assert summary.startswith(f"{len(rows)} measured")
