"""Per-rank peak memory of sharded work: exact live tensor bytes in each rank, never summed.

:class:`ShardedLiveBytes` is :class:`fps_profile.trackers.LiveTensorBytes` with two
things FSDP2 needs:

* FSDP2 frees an all-gathered weight by resizing its storage to 0 bytes and
  reallocates it by resizing it back (``free_storage``/``alloc_storage``), storage
  methods no dispatch mode sees; while the tracker is active they are wrapped so
  that every resize is counted (else every block's weights would look live at once);
* a DTensor has no storage of its own: its local tensor is counted.

What a rank's tracker cannot see: buffers gloo allocates inside a collective
(in C++, on its own threads), and temporaries DTensor creates while computing one
of its ops (the results are counted). :func:`rank_peak` measures one call in a
rank; :class:`RankPeaks` reports the ranks' peaks as max and spread (max - min).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fps_profile.selection.sharding.tensors import is_sharded
from fps_profile.trackers import LiveTensorBytes


class ShardedLiveBytes(LiveTensorBytes):
    """Live CPU tensor bytes of this rank, FSDP2's storage resizes and DTensors included."""

    def track(self, t: torch.Tensor, check_budget: bool = True) -> None:
        if is_sharded(t):
            t = t._local_tensor
        super().track(t, check_budget)

    def __enter__(self):
        self._patches = contextlib.ExitStack()
        self._patches.enter_context(storage_resizes(self))
        try:
            return super().__enter__()
        except BaseException:
            self._patches.close()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()


@contextlib.contextmanager
def storage_resizes(tracker: ShardedLiveBytes) -> Iterator[None]:
    """Wrap FSDP2's ``alloc_storage``/``free_storage`` (where its modules bound them) so the
    tracker counts each resize."""
    try:
        from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group
    except ImportError:  # no FSDP2 in this torch: nothing to wrap
        yield
        return
    saved = []
    for module in (_fsdp_param, _fsdp_param_group):
        for name in ("alloc_storage", "free_storage"):
            original = getattr(module, name, None)
            if original is None:
                continue

            def counted(tensor, _original=original):
                _original(tensor)
                tracker.track(tensor)

            saved.append((module, name, original))
            setattr(module, name, counted)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def rank_peak(fn: Callable[[], Any], warmup: int = 1) -> int:
    """This rank's peak live tensor bytes during ``fn()`` (after ``warmup`` untracked calls),
    tensors alive before the call included (as ``max_memory_allocated``)."""
    for _ in range(warmup):
        fn()
    with ShardedLiveBytes("cpu") as live:
        out = fn()
    del out
    return live.peak


@dataclass(frozen=True)
class RankPeaks:
    """The ranks' peak live bytes.

    Attributes:
        peaks: Each rank's peak, in rank order.
    """

    peaks: tuple[int, ...]

    @property
    def max(self) -> int:
        """The largest rank's peak: what each device must hold."""
        return max(self.peaks)

    @property
    def spread(self) -> int:
        """Largest minus smallest peak (uneven shards, rank-0-only work)."""
        return max(self.peaks) - min(self.peaks)

    def to_dict(self) -> dict:
        return {"world_size": len(self.peaks), "peak_max_bytes": self.max, "peak_spread_bytes": self.spread,
                "peaks_bytes": list(self.peaks)}


def rank_peaks(peaks) -> RankPeaks:
    """:class:`RankPeaks` of the per-rank peaks that ``run_ranks`` returned."""
    return RankPeaks(tuple(int(p) for p in peaks))
