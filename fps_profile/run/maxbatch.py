"""Largest batch that fits a memory budget: doubling (or halving), then bisection.

Each probe is an ordinary measurement (a row in the results file, reused on
resume). A probe fits when its status is ``ok`` and its peak allocated bytes
are within the budget; an ``oom`` row does not fit; any other failure stops
that search with the error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fps_profile.rows.result import Result


@dataclass
class MaxBatch:
    """Outcome of one search.

    Attributes:
        max_batch: Largest fitting batch (None: not even the first probe fits).
        peak_bytes: Peak allocated at ``max_batch``.
        first_oom: Smallest batch known not to fit (None: the cap was reached).
        error: Message if a probe failed for another reason than memory.
        probes: Batch sizes tried, in order.
        chunk: Set when no batch is too large: the selection reads this many sequences at a
            time (:func:`fps_profile.knobs.token_chunk`), ``max_batch`` is two such chunks
            and a larger batch adds only its token ids to ``peak_bytes``.
    """

    max_batch: int | None = None
    peak_bytes: int | None = None
    first_oom: int | None = None
    error: str | None = None
    probes: list[int] | None = None
    chunk: int | None = None


def find_max_batch(measure: Callable[[int], Result], budget_bytes: int, start: int = 1,
                   cap: int = 1 << 16) -> MaxBatch:
    """Search the largest batch in ``[1, cap]`` for which ``measure(batch)`` fits.

    From ``start`` the search doubles while probes fit, or halves while they do not
    (down to batch 1), then bisects the gap between the largest fitting batch and the
    smallest that does not, so it finds the same batch whatever ``start`` is.

    Args:
        measure: Measures one batch size and returns its row.
        budget_bytes: Memory budget the peak must stay within.
        start: First batch size tried (clamped to ``[1, cap]``).
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

    lo, hi = 0, None  # the largest batch known to fit (0: none), the smallest known not to
    b = max(1, min(start, cap))
    ok = fits(b)
    if ok is None:
        return result
    if ok:
        lo = b
        while hi is None and b < cap:
            b = min(b * 2, cap)
            ok = fits(b)
            if ok is None:
                return result
            lo, hi = (b, hi) if ok else (lo, b)
    else:
        hi = b
        while lo == 0 and b > 1:
            b //= 2
            ok = fits(b)
            if ok is None:
                return result
            lo, hi = (b, hi) if ok else (lo, b)
    while hi is not None and hi - lo > 1 and lo >= 1:
        mid = (lo + hi) // 2
        ok = fits(mid)
        if ok is None:
            return result
        lo, hi = (mid, hi) if ok else (lo, mid)
    result.max_batch = lo or None
    result.peak_bytes = peaks.get(lo)
    result.first_oom = hi
    return result


def chunked_search(measure: Callable[[int], Result], budget_bytes: int, chunk: int) -> MaxBatch | None:
    """For a selection that reads ``chunk`` sequences at a time: one probe at two chunks.

    Past one chunk its peak grows only by the token ids (8 bytes a token), so doubling would
    run on to the search's cap, thousands of chunks a probe. If two chunks fit, every batch
    does, up to the ids; if not, None, and :func:`find_max_batch` searches below.
    """
    row = measure(2 * chunk)
    if row.status != "ok" or (row.peak_allocated_bytes is not None and row.peak_allocated_bytes > budget_bytes):
        return None
    return MaxBatch(max_batch=2 * chunk, peak_bytes=row.peak_allocated_bytes, probes=[2 * chunk], chunk=chunk)


def _chunk_of(cell) -> int | None:
    """Sequences per forward when ``cell`` is a selection that reads its token batch in chunks."""
    from fps_profile.knobs import sequences_per_chunk
    from fps_profile.selection.selectors.registry import get

    if cell.phase != "select" or not cell.seq_len or cell.micro_batch or not get(cell.selector).token_chunks:
        return None
    return sequences_per_chunk(cell.seq_len)


@dataclass
class Search:
    """One max-batch search of a grid: where, what, and what it found."""

    device: str
    dtype: str
    model_label: str
    series: str
    budget_bytes: int
    result: MaxBatch


def search_grid(grid, out, executor, *, timeout_s: float | None = 1800.0, retry_failed: bool = False,
                on_new=None) -> list[Search]:
    """Search the largest batch of every series of ``grid`` that fits the memory budget.

    The budget is the device's memory (the simulated card's on ``sim``, the GPU's on ``cuda``), or the
    grid's ``memory_budget`` where that is smaller or the device's memory is unknown. Every knob
    setting that changes a series gets its own search (``--checkpointing off,on`` searches GPS twice
    and FPS once: FPS has no backward to checkpoint). Probes are ordinary rows of ``out``, reused on
    resume.

    Raises:
        UserError: A bad grid, or a device whose memory is unknown and no budget given.
    """
    import dataclasses

    from fps_profile.errors import UserError
    from fps_profile.measure.backends import backend_for
    from fps_profile.rows.label import model_label, series
    from fps_profile.run.grid import effective
    from fps_profile.run.sweep import ResultsFile

    grid.validate(local_devices=not getattr(executor, "remote", False))
    results = ResultsFile(out, executor, timeout_s, retry_failed)
    found = []
    for device in grid.devices:
        # A budget above the device's memory cannot hold: the device runs out first (a simulated card too).
        budget = min((b for b in (grid.memory_budget, backend_for(device).memory_bytes(device)) if b), default=None)
        if budget is None:
            raise UserError(f"--max-batch on {device} needs --memory-budget (e.g. 8GiB)")
        plans = [(phase, s, k) for phase, s in grid.series() if phase != "train_floor"
                 for k in {tuple(effective(k, phase, s, 1 << 62).items()): effective(k, phase, s, 1 << 62)
                           for k in grid.settings()}.values()]
        proto = dataclasses.replace(grid, devices=[device], memory_budget=budget, repeats=1)
        for dtype in grid.dtypes:
            for model, seq in ((m, n) for m in grid.models for n in grid.seq_lens_for(m)):
                for phase, selector, setting in plans:
                    def probe(batch: int, phase=phase, selector=selector, setting=setting, seq=seq, model=model):
                        return results.row(proto.cell(model, batch, dtype, device, phase, selector, setting, seq),
                                           on_new)

                    first = proto.cell(model, 1, dtype, device, phase, selector, setting, seq)
                    chunk = _chunk_of(first)
                    res = chunk and chunked_search(probe, budget, chunk)
                    res = res or find_max_batch(probe, budget, start=min(grid.batch_sizes))
                    found.append(Search(device, dtype, model_label(first), series(first), budget, res))
    return found
