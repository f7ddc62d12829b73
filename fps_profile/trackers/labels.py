"""The vocabulary of a peak breakdown, and the marks code under measurement leaves for it.

:mod:`fps_profile.trackers.breakdown` records the categories below; the work it
measures only marks phases (:func:`phase`) and relabels tensors it knows better
(:func:`label`). Both are no-ops unless a :class:`~fps_profile.trackers.breakdown.PeakBreakdown`
is recording, so selection and training code call them unconditionally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES

CATEGORIES = BREAKDOWN_CATEGORIES
# Shown only where a backend has them (sim, the cuda extra run).
DEVICE_CATEGORIES = ("workspace", "allocator_slack")
TOP_MODULES = 10

INPUTS, OPTIMIZER, OUTSIDE, BEFORE = "(inputs)", "(optimizer)", "(outside modules)", "(before the run)"
SLACK = "(allocator)"
PHASE_HOLDERS = {"optimizer": OPTIMIZER, "scoring": "(scoring)"}

_active = None  # the recording PeakBreakdown, if any (set by it)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark the work inside the block as phase ``name`` (a no-op unless a breakdown is recording)."""
    bd = _active
    if bd is None:
        yield
        return
    previous = bd._mark
    bd._mark = name
    try:
        yield
    finally:
        bd._mark = previous


def label(tensor: torch.Tensor, category: str, holder: str | None = None) -> None:
    """Count ``tensor``'s storage as ``category`` (held by ``holder``) from now on, if a breakdown is recording."""
    if _active is not None:
        _active.relabel(tensor, category, holder)


class Snapshot:
    """The composition of live memory at one moment.

    Attributes:
        total: Bytes live.
        categories: Category -> bytes.
        holders: ``(holder, category)`` -> bytes.
    """

    __slots__ = ("total", "categories", "holders")

    def __init__(self, total: int, categories: dict[str, int], holders: dict[tuple[str, str], int]) -> None:
        self.total, self.categories, self.holders = total, categories, holders

    def breakdown(self) -> dict[str, int]:
        """Category -> bytes in :data:`CATEGORIES` order (those of :data:`DEVICE_CATEGORIES` only when nonzero)."""
        return {c: self.categories.get(c, 0) for c in CATEGORIES
                if c not in DEVICE_CATEGORIES or self.categories.get(c)}

    def top(self, n: int = TOP_MODULES) -> list[dict]:
        """The ``n`` largest ``(holder, category)`` figures, largest first."""
        items = sorted(((b, h, c) for (h, c), b in self.holders.items() if b > 0), key=lambda x: (-x[0], x[1], x[2]))
        return [{"module": h, "category": c, "bytes": b} for b, h, c in items[:n]]
