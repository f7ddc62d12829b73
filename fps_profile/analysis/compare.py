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


def compare(measured: Sequence[Result], predicted: Sequence[Result]) -> tuple[str, list[float]]:
    """The table and the signed errors in percent (predicted / measured - 1)."""
    sim = {match_key(r): r for r in predicted if r.status == "ok" and r.peak_allocated_bytes}
    body, errors = [], []
    for m in measured:
        p = sim.get(match_key(m))
        if m.status != "ok" or not m.peak_allocated_bytes or p is None:
            continue
        err = 100.0 * (p.peak_allocated_bytes / m.peak_allocated_bytes - 1.0)
        errors.append(err)
        body.append([model_label(m), str(m.batch_size), m.dtype, series(m), fmt_bytes(p.peak_allocated_bytes),
                     fmt_bytes(m.peak_allocated_bytes), f"{err:+.1f}%"])
    if not body:
        raise UserError("no cell is in both files with status ok")
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
