"""What the bytes at a peak are, which module holds them, and in which phase the peak falls.

:class:`PeakBreakdown` watches a live-tensor tracker
(:class:`~fps_profile.trackers.LiveTensorBytes`, or the sim backend's
:class:`~fps_profile.sim.tracker.SimTensorBytes`) through its ``observer``
calls and gives every storage the tracker counts a *category* and a *holder*
(a module path, or a name in parentheses for what no module holds). The categories
are :data:`fps_profile.rows.metrics.BREAKDOWN_CATEGORIES` (docs/breakdown.md says what
each holds): ``weights``, ``buffers``, ``inputs``, ``gradients``, ``optimizer_state``,
``mask`` (the selection's masks; the buffers of a module whose ``breakdown_buffers`` says so,
such as a sparse step's index buffers), ``activations`` (saved for backward), ``temporaries``
(everything else), and ``workspace`` / ``allocator_slack`` where a backend has them.

Classification is by storage identity (what is known on entry, module hooks, saved-tensor
hooks, scans of ``param.grad`` and ``optimizer.state``; docs/breakdown.md, "How it is recorded").
Phases: ``backward`` while autograd's engine runs, otherwise the innermost
:func:`~fps_profile.trackers.labels.phase` mark (``forward`` by default). Every figure is a
sum of what the tracker counted for live storages, so the categories sum exactly to its peak.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from fps_profile.trackers import labels as _labels
from fps_profile.trackers.labels import PHASE_HOLDERS, BEFORE, INPUTS, OPTIMIZER, OUTSIDE, SLACK, Snapshot
from fps_profile.trackers.tensor import storage_key

class PeakBreakdown:
    """Context manager classifying what a live-tensor tracker counts, peak by peak.

    Enter it inside the tracker's ``with`` block, around the measured work::

        with LiveTensorBytes("cpu") as live, PeakBreakdown(live, model, inputs=batches) as bd:
            fn()
        bd.peak_phase, bd.peak.breakdown(), bd.peak.top()

    Args:
        tracker: A live :class:`~fps_profile.trackers.LiveTensorBytes` (or subclass).
        model: The model whose parameters, buffers and modules are named.
        inputs: The batches (any nesting of tensors).
        optimizer: The optimizer whose state is ``optimizer_state``.

    Attributes:
        phases: Phase -> :class:`Snapshot` at that phase's peak, in order of first appearance.
    """

    def __init__(self, tracker, model: nn.Module, *, inputs=(), optimizer: torch.optim.Optimizer | None = None):
        self.tracker, self.model, self.inputs, self.optimizer = tracker, model, inputs, optimizer
        self.phases: dict[str, Snapshot] = {}
        self._mark = "forward"
        self._phase = None
        self._records: dict[int, list] = {}  # storage key -> [bytes, category, holder, slack bytes]
        self._categories: dict[str, int] = {}
        self._holders: dict[tuple[str, str], int] = {}
        self._total = 0
        self._phase_peaks: dict[str, int] = {}
        self._pending: str | None = None
        self._allocating: set[str] = set()  # phases in which something was allocated
        self._stack: list[str] = []
        self._bw_holder = OUTSIDE
        self._grads_seen = False
        self._queued_task = None
        self._cleanup = contextlib.ExitStack()

    # -- what is known upfront -------------------------------------------------
    def _known(self) -> dict[int, tuple[str, str]]:
        known: dict[int, tuple[str, str]] = {}

        def put(t, category, holder):
            key = storage_key(t) if isinstance(t, torch.Tensor) else None
            if key is not None:
                known.setdefault(key, (category, holder))

        self._paths = {}
        self._params = []
        owner = {}
        for path, module in self.model.named_modules(remove_duplicate=False):
            path = path or "(model)"
            self._paths.setdefault(module, path)
            for p in module._parameters.values():
                if p is not None and id(p) not in owner:
                    owner[id(p)] = path
                    self._params.append((p, path))
            for b in module._buffers.values():
                if b is not None:
                    put(b, getattr(module, "breakdown_buffers", "buffers"), path)
        for p, path in self._params:
            put(p.grad, "gradients", path)
        for t in tree_leaves(self.inputs):
            put(t, "inputs", INPUTS)
        if self.optimizer is not None:
            for p, state in self.optimizer.state.items():
                for v in state.values():
                    put(v, "optimizer_state", owner.get(id(p), OPTIMIZER))
        for p, path in self._params:  # last: a weight shared with anything else is a weight
            key = storage_key(p)
            if key is not None:
                known[key] = ("weights", path)
        self._owner = owner
        return known

    # -- context ---------------------------------------------------------------
    def __enter__(self) -> PeakBreakdown:
        if _labels._active is not None:
            raise RuntimeError("a PeakBreakdown is already recording")
        known = self._known()
        self._grads_seen = any(p.grad is not None for p, _ in self._params)
        self._switch(self._current_phase())
        requested = self.tracker.live_sizes(requested=True)
        for key, size in self.tracker.live_sizes().items():
            category, holder = known.get(key, ("temporaries", BEFORE))
            self._add(key, size, category, holder, requested.get(key, size))
        self.tracker.observer = self
        _labels._active = self
        self._cleanup.callback(self._detach)
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self._cleanup.callback(register_module_forward_pre_hook(self._enter_module).remove)
        self._cleanup.callback(register_module_forward_hook(self._leave_module, always_call=True).remove)
        self._cleanup.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup.close()

    def _detach(self) -> None:
        self._scan()
        self._finalize()
        # A phase that allocated nothing (e.g. the forward mark before a data-free selector scores) is no phase.
        self.phases = {k: v for k, v in self.phases.items() if k in self._allocating} or self.phases
        self.tracker.observer = None
        _labels._active = None
        self._paths, self._stack = {}, []

    # -- results ---------------------------------------------------------------
    @property
    def peak_phase(self) -> str | None:
        """The phase whose peak is the run's peak (the earliest on a tie)."""
        best = None
        for name, snap in self.phases.items():
            if best is None or snap.total > self.phases[best].total:
                best = name
        return best

    @property
    def peak(self) -> Snapshot | None:
        """The :class:`Snapshot` at the run's peak."""
        name = self.peak_phase
        return self.phases[name] if name else None

    def fill(self, row, run: str = "measured") -> None:
        """Set the breakdown fields of a result row (see :mod:`fps_profile.rows.result`)."""
        snap = self.peak
        if snap is None:
            return
        row.peak_breakdown_bytes = snap.breakdown()
        row.peak_phase = self.peak_phase
        row.peak_top_modules = snap.top()
        row.peak_breakdown_by_phase = {name: s.breakdown() for name, s in self.phases.items()}
        row.peak_breakdown_run = run

    # -- observer calls from the tracker ------------------------------------------
    def added(self, key: int, size: int, requested: int | None = None) -> None:
        """A new storage of ``size`` bytes counted (``requested`` of them asked for; the rest is slack)."""
        now = self._current_phase()
        if now != self._phase:
            self._switch(now)
        self._allocating.add(now)
        if now == "backward":
            self._grads_seen = True
            self._queue_grad_scan()
            holder = self._bw_holder
        elif self._stack:
            holder = self._stack[-1]
        else:
            holder = PHASE_HOLDERS.get(now, OUTSIDE)
        self._add(key, size, "temporaries", holder, requested)

    def resized(self, key: int, size: int, requested: int | None = None) -> None:
        """A counted storage now counts ``size`` bytes."""
        rec = self._records.get(key)
        if rec is None:
            return
        if size < rec[0]:
            self._finalize()
        self._uncount(rec)
        rec[0], rec[3] = size, size - (size if requested is None else requested)
        self._recount(rec)
        self._grow()

    def freed(self, key: int) -> None:
        """A counted storage is gone."""
        rec = self._records.pop(key, None)
        if rec is None:
            return
        self._finalize()
        self._uncount(rec)

    def relabel(self, tensor: torch.Tensor, category: str, holder: str | None = None) -> None:
        """Count ``tensor``'s storage as ``category`` from now on (``holder`` None keeps its holder)."""
        self._move(storage_key(tensor), category, holder)

    # -- bookkeeping -------------------------------------------------------------
    def _current_phase(self) -> str:
        return "backward" if torch._C._current_graph_task_id() != -1 else self._mark

    def _add(self, key: int, size: int, category: str, holder: str, requested: int | None = None) -> None:
        rec = self._records[key] = [size, category, holder, size - (size if requested is None else requested)]
        self._recount(rec)
        self._grow()

    def _recount(self, rec: list) -> None:
        self._count(rec[1], rec[2], rec[0] - rec[3])
        if rec[3]:
            self._count("allocator_slack", SLACK, rec[3])

    def _uncount(self, rec: list) -> None:
        self._count(rec[1], rec[2], rec[3] - rec[0])
        if rec[3]:
            self._count("allocator_slack", SLACK, -rec[3])

    def _count(self, category: str, holder: str, delta: int) -> None:
        self._total += delta
        self._categories[category] = self._categories.get(category, 0) + delta
        self._holders[(holder, category)] = self._holders.get((holder, category), 0) + delta

    def _move(self, key: int | None, category: str, holder: str | None) -> None:
        rec = self._records.get(key)
        if rec is None or (rec[1] == category and (holder is None or rec[2] == holder)):
            return
        self._uncount(rec)
        rec[1], rec[2] = category, holder or rec[2]
        self._recount(rec)

    def _grow(self) -> None:
        if self._total > self._phase_peaks.get(self._phase, -1):
            self._phase_peaks[self._phase] = self._total
            self._pending = self._phase

    def _finalize(self) -> None:
        if self._pending is None:
            return
        self._scan()
        self.phases[self._pending] = Snapshot(self._total, dict(self._categories),
                                              {k: v for k, v in self._holders.items() if v})
        self._pending = None

    def _switch(self, name: str) -> None:
        self._scan()
        self._finalize()
        self._phase = name
        self.phases.setdefault(name, Snapshot(0, {}, {}))
        self._grow()  # what is live when a phase starts is part of its peak

    def _scan(self) -> None:
        """Classify the gradients and optimizer state that exist now."""
        if self._grads_seen:
            for p, path in self._params:
                g = p.grad
                if g is not None:
                    self._move(storage_key(g), "gradients", path)
        if self.optimizer is not None and self._phase == "optimizer":
            for p, state in self.optimizer.state.items():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        self._move(storage_key(v), "optimizer_state", self._owner.get(id(p), OPTIMIZER))

    def _queue_grad_scan(self) -> None:
        # Gradients held past the backward pass (GPS keeps references, then clears .grad)
        # must be classified before .grad is cleared: scan once the engine finishes.
        task = torch._C._current_graph_task_id()
        if task != self._queued_task:
            self._queued_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._scan)

    # -- hooks -------------------------------------------------------------------
    def _enter_module(self, module: nn.Module, args) -> None:
        self._stack.append(self._paths.get(module) or (self._stack[-1] if self._stack else OUTSIDE))

    def _leave_module(self, module: nn.Module, args, output) -> None:
        if self._stack:
            self._stack.pop()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        rec = self._records.get(storage_key(t))
        if rec is not None and rec[1] == "temporaries":
            self._move(storage_key(t), "activations", None)
        return t

    def _unpack(self, t: torch.Tensor) -> torch.Tensor:
        rec = self._records.get(storage_key(t))
        if rec is not None and rec[1] in ("weights", "activations"):
            self._bw_holder = rec[2]
        return t

