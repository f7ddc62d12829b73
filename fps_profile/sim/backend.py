"""The ``sim`` backend: one cell predicted on a simulated GPU (:mod:`fps_profile.sim`)."""

from __future__ import annotations

import time

import torch

from fps_profile.measure.backends import Backend
from fps_profile.measure.targets import get_target


class SimBackend(Backend):
    """Predicts ``max_memory_allocated`` and FLOPs of a cell on ``sim[:target]``, on fake tensors."""

    name = "sim"
    predicts = True
    timed = False

    def check(self, device: str, *, local: bool = True) -> None:
        get_target(device)

    def env(self, device: str) -> dict:
        target = get_target(device)
        return {"device_name": target.description, "device_memory_bytes": target.memory_bytes}

    def memory_bytes(self, device: str) -> int | None:
        return get_target(device).memory_bytes

    def measure(self, cell, row) -> None:
        """Fill ``row`` with the prediction for ``cell``.

        Protocol, as the real backends': build the model and batches; for a sparse
        ``train_step``, a mask with the budget's exact counts (:mod:`fps_profile.sim.masks`);
        warm-up (only a phase that keeps state runs one; the others get the cuBLAS
        workspaces their warm-up would leave); then the measured run. ``wall_time_s``
        stays empty.

        Raises:
            UserError: Bad target, model, budget, or a model that needs tensor values.
            torch.OutOfMemoryError: Beyond ``cell.memory_budget`` (the runner records ``oom``).
        """
        from fps_profile.measure.runner import build_cell
        from fps_profile.models import parse_dtype
        from fps_profile.rows.phases import get_phase
        from fps_profile.sim.session import Simulator

        from fps_profile.measure.distributed.rank_phases import is_sharded_cell

        if is_sharded_cell(cell):  # one FSDP2 rank under a fake process group
            from fps_profile.sim.sharded import measure_sharded

            measure_sharded(cell, row)
            return
        start = time.perf_counter()
        target = get_target(cell.device)
        dtype = parse_dtype(cell.dtype)
        with Simulator(target, budget_bytes=cell.memory_budget, what=repr(cell.model)) as sim:
            model = sim.model(cell.model, dtype, cell.image_size)
            batches = [sim.batch(model, cell.batch_size, dtype, cell.image_size, cell.seq_len)
                       for _ in range(cell.num_batches)]
            fn = build_cell(cell, model, batches, SimPhaseHooks(sim), row)
            phase = get_phase(cell.phase)
            warmup = min(cell.warmup, 1) if phase.keeps_state else 0
            passes = phase.passes if phase.passes is not None else selector_passes(cell.selector)
            stats = sim.measure(fn, warmup=warmup, workspaces=() if warmup else passes, model=model,
                                inputs=batches, optimizer=getattr(fn, "optimizer", None))
        row.peak_allocated_bytes = stats.peak_bytes
        stats.breakdown.fill(row)
        row.flops = stats.flops
        row.time_floor_s = stats.time_floor_s
        row.wall_time_s, row.wall_times_s = None, []
        row.env["sim"] = {"target": target.name, "backend": target.backend,
                          "cublas_workspace_bytes": target.cublas_workspace_bytes,
                          "allocator": "caching" if target.is_cuda else "exact",
                          "flops_by_kind": {f"{k}:{d}": n for (k, d), n in sorted(stats.flop_counts.items())},
                          "seconds": round(time.perf_counter() - start, 3)}


def selector_passes(selector: str) -> tuple[str, ...]:
    """The passes ``selector`` runs (``forward``, ``backward``): the cuBLAS workspaces a warm-up would leave."""
    from fps_profile.selection.selectors import get

    cls = get(selector)
    return (("forward",) if cls.needs_data else ()) + (("backward",) if cls.needs_backward else ())


class SimPhaseHooks(Backend):
    """The phase hooks of :class:`~fps_profile.measure.backends.Backend` on a simulated device."""

    def __init__(self, sim) -> None:
        self.sim = sim

    def train_mask(self, model, batches, cell, budget, options):
        """A mask with the budget's exact counts (a fake model's scores have no values)."""
        from fps_profile.selection.selectors import create
        from fps_profile.sim.fake import real_tensors
        from fps_profile.sim.masks import synthetic_mask

        create(cell.selector, **options)  # the options fail here as they would on a device
        with real_tensors():
            return synthetic_mask(model, budget, cell.scope)

    def train_step(self, model, batch, mask, knobs):
        fn = _train_step(self.sim, model, batch, mask, knobs)
        if fn.scaler is not None:
            fn.scaler = _FakeScaler("cpu")  # the sim's fake tensors are CPU tensors
        return fn

    def select_trainable(self, model, budget, scope):
        from fps_profile.sim.masks import trainable_counts

        return sum(trainable_counts(model, budget, scope).values())


class _FakeScaler(torch.amp.GradScaler):
    """A ``GradScaler`` whose step never reads ``found_inf`` (a fake tensor has no value):
    the optimizer steps, as it does on every finite step on the GPU; scaling, unscaling
    and the inf checks still run, so their memory counts."""

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)


def _train_step(sim, model, batch, mask, knobs):
    """:func:`fps_profile.measure.phases.train_step_fn`, with a host mask turned into fake index buffers.

    ``make_sparse_trainable`` counts and indexes the mask's entries, which a fake
    mask cannot answer, so the mask is real; its index buffers (on the GPU in a
    real run) are then replaced by fake tensors of the same size so they count.
    """
    import torch

    from fps_profile.measure import phases
    from fps_profile.sim.fake import real_tensors

    if mask is None:
        return phases.train_step_fn(model, *batch, knobs=knobs)
    with real_tensors():
        fn = phases.train_step_fn(model, *batch, mask=mask, knobs=knobs)
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if isinstance(buf, torch.Tensor) and not isinstance(buf, torch._subclasses.FakeTensor):
                module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype)
    return fn
