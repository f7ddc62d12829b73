"""Harness overhead: the time the profiler records for a selection, against a bare loop.

Both run in this one process on the same model and batch: the profiler's
:func:`fps_profile.measure.runner.measure` (warm-up, a memory-tracked run, timed repeats,
median) and a plain ``perf_counter`` loop over :func:`fps_profile.measure.phases.select_fn`.
They are interleaved over several rounds so that drift hits both alike. The
tracked number is median(recorded) / median(bare): 1.00 means the harness adds
nothing; the target is within 3%.
"""

from __future__ import annotations

import statistics
import time

import torch

from .common import skip

MODEL = "vit_tiny_patch16_224"
ROUNDS = 5
REPEATS = 5


def recorded_and_bare(selector: str = "fps", model: str = MODEL, batch: int = 1, rounds: int = ROUNDS,
                      repeats: int = REPEATS) -> tuple[list[float], list[float]]:
    """Per round, the profiler's recorded median and the bare loop's median (seconds)."""
    from fps_profile.rows.cell import Cell
    from fps_profile.measure.runner import measure

    from .common import select_callable

    cell = Cell(model=model, batch_size=batch, phase="select", selector=selector, device="cpu",
                warmup=1, repeats=repeats)
    fn = select_callable(selector, model, batch)
    fn()
    recorded, bare = [], []
    for _ in range(rounds):
        row = measure(cell)
        if row.status != "ok":
            raise RuntimeError(f"{cell.label()}: {row.status}: {row.error}")
        recorded.append(row.wall_time_s)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
            del out
        bare.append(statistics.median(times))
    return recorded, bare


class HarnessOverhead:
    """Recorded / bare time of an FPS selection on ``vit_tiny_patch16_224``, batch 1, CPU."""

    unit = "ratio"
    timeout = 600

    def setup(self):
        try:
            from fps_profile.measure.runner import measure  # noqa: F401
        except ImportError:
            skip("no runner in this commit")
        torch.set_num_threads(1)

    def track_recorded_over_bare(self):
        recorded, bare = recorded_and_bare()
        return statistics.median(recorded) / statistics.median(bare)
