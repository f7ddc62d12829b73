"""Sweeps: expand a grid into cells, skip what is measured, append rows as they come.

A sweep is resumable: cells whose key already has a row in the output are
skipped (``retry_failed`` re-measures rows with status ``error`` or ``timeout``;
the newest row of a key wins when reading). Each row is appended durably as
soon as it is measured, so a kill loses at most the cell in flight.
:class:`ResultsFile` is that loop, shared by :func:`run_sweep` and the max-batch search.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fps_profile.rows.cell import Cell
from fps_profile.rows.label import describe
from fps_profile.rows.result import Result
from fps_profile.rows.store import append_result, check_output, latest
from fps_profile.run.grid import Grid


@dataclass
class SweepReport:
    """What a sweep did: every row of its grid (old and new), and counts."""

    rows: list[Result]
    measured: int
    skipped: int
    seconds: float


def row_line(row: Result) -> str:
    """One line for a measured row: its label, then its peak and time (or its status and error)."""
    from fps_profile.units import fmt_bytes, fmt_seconds

    what = describe(row)
    if row.status != "ok":
        return f"{what}  {row.status.upper()}  {row.error or ''}"
    return f"{what}  peak {fmt_bytes(row.peak_allocated_bytes)}  time {fmt_seconds(row.wall_time_s)}"


class ResultsFile:
    """The rows of a results file, and measuring what it lacks through an executor.

    Args:
        path: JSON-lines results file; created if missing, resumed if present (checked here).
        executor: Where cells run.
        timeout_s: Per-cell limit; a worker past it is killed and recorded as ``timeout``.
        retry_failed: Re-measure cells whose latest row is ``error`` or ``timeout``.
    """

    def __init__(self, path: str | os.PathLike, executor, timeout_s: float | None = 1800.0,
                 retry_failed: bool = False) -> None:
        self.path = Path(path)
        self.have = latest(check_output(self.path))
        self.executor, self.timeout_s, self.retry_failed = executor, timeout_s, retry_failed

    def done(self, cell: Cell) -> bool:
        """Whether ``cell`` has a row that need not be measured again."""
        row = self.have.get(cell.key())
        return row is not None and not (self.retry_failed and row.status in ("error", "timeout"))

    def measure(self, cells: Iterable[Cell]) -> Iterator[Result]:
        """Measure ``cells`` (all of them: filter with :meth:`done`), appending each row as it comes."""
        produced = self.executor.run(list(cells), self.timeout_s)
        try:
            for row in produced:
                append_result(self.path, row)
                self.have[row.key()] = row
                yield row
        finally:
            if hasattr(produced, "close"):  # an interrupted sweep stops its executor's work now, not at collection
                produced.close()

    def row(self, cell: Cell, on_new: Callable[[Result], None] | None = None) -> Result:
        """``cell``'s row: the one in the file, or a new measurement (``on_new`` is told of it)."""
        if self.done(cell):
            return self.have[cell.key()]
        row = next(iter(self.measure([cell])))
        if on_new:
            on_new(row)
        return row


def run_sweep(grid: Grid, out: str | os.PathLike, *, executor=None, timeout_s: float | None = 1800.0,
              retry_failed: bool = False, progress: bool = True,
              on_row: Callable[[Result], None] | None = None) -> SweepReport:
    """Measure every cell of ``grid`` not yet in ``out``, appending rows as they come.

    Args:
        grid: What to measure (validated here first).
        out: JSON-lines results file; created if missing, resumed if present.
        executor: Where cells run (default: :class:`~fps_profile.run.executors.LocalExecutor`).
        timeout_s: Per-cell limit; a worker past it is killed and recorded as ``timeout``.
        retry_failed: Re-measure cells whose latest row is ``error`` or ``timeout``.
        progress: Show a progress bar with ETA (stderr) and one line per row.
        on_row: Called with each new row after it is written.

    Raises:
        UserError: A bad grid or output, before anything is measured.
    """
    from tqdm import tqdm

    from fps_profile.run.executors import LocalExecutor

    executor = executor or LocalExecutor()
    grid.validate(local_devices=not getattr(executor, "remote", False))
    results = ResultsFile(out, executor, timeout_s, retry_failed)
    cells = grid.cells()
    todo = [c for c in cells if not results.done(c)]
    start = time.perf_counter()
    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", file=sys.stderr,
               disable=not tty, dynamic_ncols=True, desc="sweep")
    try:
        for i, row in enumerate(results.measure(todo), start=1):
            if tty:
                bar.write(row_line(row), file=sys.stderr)
            elif progress:  # a log, not a terminal: plain lines with the ETA
                elapsed = time.perf_counter() - start
                eta = elapsed / i * (len(todo) - i)
                print(f"[{len(cells) - len(todo) + i}/{len(cells)} {elapsed:.0f}s, eta {eta:.0f}s] "
                      f"{row_line(row)}", file=sys.stderr, flush=True)
            bar.update(1)
            if on_row:
                on_row(row)
    finally:
        bar.close()
    rows = [results.have[c.key()] for c in cells if c.key() in results.have]
    return SweepReport(rows=rows, measured=len(todo), skipped=len(cells) - len(todo),
                       seconds=time.perf_counter() - start)
