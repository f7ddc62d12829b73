"""Exact live-tensor bytes: a dispatch-mode tracker of tensor storages.

Every operator's output tensors are inspected; a storage seen for the first
time is counted with its size and uncounted when it is freed (a weak-reference
finaliser on the storage object, which PyTorch keeps alive exactly as long as
the storage itself). The peak therefore has the meaning of the CUDA caching
allocator's ``max_memory_allocated``, without its block rounding: bytes of
every live tensor, counted once however many views share them.

Tensors alive before the region (weights, inputs, optimizer state) are found by
scanning the garbage collector's objects once on entry, so the peak includes
them, as ``max_memory_allocated`` does after ``reset_peak_memory_stats``.
"""

from __future__ import annotations

import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Context manager measuring live tensor bytes on one device type.

    Args:
        device_type: Only storages on this device type are counted (``"cpu"``,
            or ``"cuda"`` for fake CUDA tensors under the sim backend).
        include_existing: Count tensors that exist when the region starts.
        budget_bytes: If set, raise ``torch.OutOfMemoryError`` as soon as live
            bytes exceed it (a simulated device of that size).
        round_bytes: Optional ``nbytes -> bytes`` function applied to each storage
            (the sim backend models the CUDA allocator's block rounding with it).

    Attributes:
        current: Live bytes now.
        peak: Highest ``current`` since entry or the last :meth:`reset_peak`.
        baseline: Live bytes found on entry.
        observer: Told of every storage counted, resized and freed (``added``,
            ``resized``, ``freed``), with the bytes counted for it; None by
            default. :class:`~fps_profile.trackers.breakdown.PeakBreakdown` sets it.
    """

    def __init__(self, device_type: str = "cpu", *, include_existing: bool = True,
                 budget_bytes: int | None = None, round_bytes=None) -> None:
        super().__init__()
        self.device_type = device_type
        self.include_existing = include_existing
        self.budget_bytes = budget_bytes
        self.round_bytes = round_bytes or (lambda n: n)
        self.current = self.peak = self.baseline = 0
        self._live: dict[int, int] = {}
        self._requested: dict[int, int] = {}  # storage bytes before round_bytes
        self._finalizers: list[weakref.finalize] = []
        self.observer = None

    # -- bookkeeping -----------------------------------------------------------
    def _free(self, key: int) -> None:
        if self.observer is not None and key in self._live:
            self.observer.freed(key)
        self.current -= self._live.pop(key, 0)
        self._requested.pop(key, None)

    def live_sizes(self, requested: bool = False) -> dict[int, int]:
        """Storage key -> bytes counted (or, with ``requested``, the bytes it asked for), for every live storage."""
        return dict(self._requested if requested else self._live)

    def track(self, t: torch.Tensor, check_budget: bool = True) -> None:
        """Count ``t``'s storage if it is new (or grew)."""
        if t.device.type != self.device_type or t.layout is not torch.strided:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            return
        key = storage._cdata
        nbytes = storage.nbytes()
        size = self.round_bytes(nbytes)
        old = self._live.get(key)
        if old is None:
            self._finalizers.append(weakref.finalize(storage, self._free, key))
            self._live[key], self._requested[key] = size, nbytes
            self.current += size
            if self.observer is not None:
                self.observer.added(key, size, nbytes)
        elif size != old:  # resized in place
            if self.observer is not None:
                self.observer.resized(key, size, nbytes)
            self._live[key], self._requested[key] = size, nbytes
            self.current += size - old
        else:
            return
        if self.current > self.peak:
            self.peak = self.current
            if check_budget and self.budget_bytes is not None and self.current > self.budget_bytes:
                raise torch.OutOfMemoryError(
                    f"simulated out of memory: {self.current:,} bytes live, budget {self.budget_bytes:,} bytes"
                )

    def reset_peak(self) -> None:
        """Start a new peak from the bytes live now."""
        self.peak = self.current

    # -- context ---------------------------------------------------------------
    def __enter__(self):
        self._live.clear()
        self._requested.clear()
        self.current = 0
        if self.include_existing:
            gc.collect()
            for obj in gc.get_objects():
                if issubclass(type(obj), torch.Tensor):  # type() avoids lazy-module __class__ hooks
                    self.track(obj, check_budget=False)
        self.baseline = self.peak = self.current
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()
        self._live.clear()
        self._requested.clear()
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                key = storage_key(leaf)
                if key not in self._live:
                    # An output sharing the storage of an input this tracker never saw (a view
                    # or in-place result of a tensor held only by C++ when the region began)
                    # is not a new allocation.
                    if inputs is None:
                        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
                    if key in inputs:
                        continue
                self.track(leaf)
        return out


def storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None
