"""Predicted (``sim``) against measured (``cuda``) peaks, cell by cell.

``python -m fps_profile.analysis.compare MEASURED.jsonl PREDICTED.jsonl`` prints a
markdown table (predicted, measured, error) and the median and worst absolute
error, matching rows on everything but the device.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

from fps_profile.errors import UserError
from fps_profile.rows.label import model_label, series
from fps_profile.rows.result import Result
from fps_profile.rows.store import read_results
from fps_profile.units import markdown_table
from fps_profile.units import fmt_bytes


def match_key(r: Result) -> tuple:
    """The row's cell key without the device: a measured row and its prediction share it."""
    return tuple(k for i, k in enumerate(r.key()) if i != 4)


def predicted_peak(r: Result) -> int | None:
    """The peak a row predicts: an ``ok`` row's, or an ``oom`` row's that kept it (a simulated card's)."""
    return r.peak_allocated_bytes if r.status in ("ok", "oom") and r.peak_allocated_bytes else None


def compare(measured: Sequence[Result], predicted: Sequence[Result]) -> tuple[str, list[float]]:
    """The table and the signed errors in percent (predicted / measured - 1).

    A prediction of out-of-memory (its peak kept) is compared as any other; where only one side
    ran out of memory without a peak, the table says so and no error is counted.
    """
    sim = {match_key(r): r for r in predicted if predicted_peak(r) or r.status == "oom"}
    body, errors = [], []
    for m in measured:
        p = sim.get(match_key(m))
        if p is None or m.status not in ("ok", "oom") or (m.status == "ok" and not m.peak_allocated_bytes):
            continue
        said = fmt_bytes(predicted_peak(p)) + (" (OOM)" if p.status == "oom" else "")
        if m.status == "ok" and predicted_peak(p):
            err = 100.0 * (p.peak_allocated_bytes / m.peak_allocated_bytes - 1.0)
            errors.append(err)
            text = f"{err:+.1f}%"
        elif m.status == p.status == "oom":
            text = "both OOM"
        else:
            text = "predicted OOM" if p.status == "oom" else "measured OOM"
        body.append([model_label(m), str(m.batch_size), m.dtype, series(m), said,
                     "OOM" if m.status == "oom" else fmt_bytes(m.peak_allocated_bytes), text])
    if not errors:
        raise UserError("no cell is in both files with a measured and a predicted peak")
    head = ["model", "batch", "dtype", "what", "predicted", "measured", "error"]
    return markdown_table(head, body), errors


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m fps_profile.analysis.compare MEASURED.jsonl PREDICTED.jsonl", file=sys.stderr)
        return 2
    try:
        table, errors = compare(read_results(argv[0]), read_results(argv[1]))
    except UserError as exc:
        print(f"fps-profile: error: {exc}", file=sys.stderr)
        return 2
    absolute = [abs(e) for e in errors]
    print(table)
    print(f"\n{len(errors)} cells: median |error| {statistics.median(absolute):.1f}%, worst {max(absolute):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
