"""Wall time of a callable: warm-up, repeats, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn: Callable[[], object], device: torch.device, warmup: int = 1,
                 repeats: int = 3) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Each repeat is bracketed by device synchronisation and ``perf_counter``;
    its output is dropped before the next repeat starts.

    Returns:
        Seconds of each timed repeat.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        del out
    return times


def median(times: list[float]) -> float | None:
    return statistics.median(times) if times else None
