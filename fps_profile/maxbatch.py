"""Largest batch that fits a memory budget: doubling, then bisection.

Each probe is an ordinary measurement (a row in the results file, reused on
resume). A probe fits when its status is ``ok`` and its peak allocated bytes
are within the budget; an ``oom`` row does not fit; any other failure stops
that search with the error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fps_profile.results import Result


@dataclass
class MaxBatch:
    """Outcome of one search.

    Attributes:
        max_batch: Largest fitting batch (None: not even the first probe fits).
        peak_bytes: Peak allocated at ``max_batch``.
        first_oom: Smallest batch known not to fit (None: the cap was reached).
        error: Message if a probe failed for another reason than memory.
        probes: Batch sizes tried, in order.
    """

    max_batch: int | None = None
    peak_bytes: int | None = None
    first_oom: int | None = None
    error: str | None = None
    probes: list[int] | None = None


def find_max_batch(measure: Callable[[int], Result], budget_bytes: int, start: int = 1,
                   cap: int = 1 << 16) -> MaxBatch:
    """Search the largest batch in ``[start, cap]`` for which ``measure(batch)`` fits.

    Args:
        measure: Measures one batch size and returns its row.
        budget_bytes: Memory budget the peak must stay within.
        start: First batch size tried.
        cap: Never probe beyond this batch size.
    """
    result = MaxBatch(probes=[])
    peaks: dict[int, int | None] = {}

    def fits(batch: int) -> bool | None:
        row = measure(batch)
        result.probes.append(batch)
        if row.status == "ok":
            peaks[batch] = row.peak_allocated_bytes
            return row.peak_allocated_bytes is None or row.peak_allocated_bytes <= budget_bytes
        if row.status == "oom":
            return False
        result.error = f"batch {batch}: {row.status}: {row.error}"
        return None

    lo, hi, b = 0, None, start
    while b <= cap:
        ok = fits(b)
        if ok is None:
            return result
        if not ok:
            hi = b
            break
        lo, b = b, b * 2
    if hi is not None:
        while hi - lo > 1 and lo >= start:
            mid = (lo + hi) // 2
            ok = fits(mid)
            if ok is None:
                return result
            lo, hi = (mid, hi) if ok else (lo, mid)
    result.max_batch = lo or None
    result.peak_bytes = peaks.get(lo)
    result.first_oom = hi
    return result
