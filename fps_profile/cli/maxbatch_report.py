"""``fps-profile sweep --max-batch``: the table of :func:`fps_profile.run.maxbatch.search_grid`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run_max_batch(grid, out: Path, executor, args: argparse.Namespace) -> int:
    from fps_profile.units import markdown_table
    from fps_profile.run.maxbatch import search_grid
    from fps_profile.run.sweep import row_line
    from fps_profile.units import fmt_bytes

    def progress(row) -> None:
        if not args.no_progress:
            print(row_line(row), file=sys.stderr)

    body = []
    for s in search_grid(grid, out, executor, timeout_s=args.timeout, retry_failed=args.retry_failed,
                         on_new=progress):
        r = s.result
        if r.chunk:
            body.append([s.device, s.dtype, s.model_label, s.series, "any", fmt_bytes(r.peak_bytes),
                         fmt_bytes(s.budget_bytes), f"reads {r.chunk} sequences at a time (peak at {r.max_batch}; "
                         "a larger batch adds only its token ids, 8 bytes each)"])
            continue
        body.append([s.device, s.dtype, s.model_label, s.series, str(r.max_batch) if r.max_batch else "none",
                     fmt_bytes(r.peak_bytes), fmt_bytes(s.budget_bytes),
                     r.error or (f"oom at {r.first_oom}" if r.first_oom else "cap reached")])
    print(markdown_table(["device", "dtype", "model", "what", "max batch", "peak", "budget", "note"], body))
    return 0
