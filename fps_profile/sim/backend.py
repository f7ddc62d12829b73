"""The ``sim`` backend: one cell predicted on a simulated GPU (:mod:`fps_profile.sim`)."""

from __future__ import annotations

import time

import torch

from fps_profile.measure.backends import Backend
from fps_profile.measure.targets import get_target
from fps_profile.rows.fit import mark_oom, over


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

        A run whose predicted allocation exceeds the card's memory (``sim:cpu`` has no limit)
        or ``cell.memory_budget`` is an ``oom`` row, as the card would give, that keeps every
        predicted figure, so it shows how much was needed (:mod:`fps_profile.rows.fit`).

        Raises:
            UserError: Bad target, model, budget, or a model that needs tensor values.
        """
        from fps_profile.measure.inputs import cell_data, num_classes_of, provenance
        from fps_profile.measure.runner import build_cell
        from fps_profile.models import parse_dtype
        from fps_profile.models.build import check_weights_on
        from fps_profile.rows.phases import get_phase
        from fps_profile.sim.session import Simulator, selector_passes

        from fps_profile.measure.distributed.rank_phases import is_sharded_cell

        if is_sharded_cell(cell):  # one FSDP2 rank under a fake process group
            from fps_profile.sim.sharded import measure_sharded

            measure_sharded(cell, row)
            return
        start = time.perf_counter()
        target = get_target(cell.device)
        dtype = parse_dtype(cell.dtype)
        data = cell_data(cell.data, cell.seed) if cell.data is not None else None  # its classes size the model
        weights = []
        # No early stop at the limit: the whole run is predicted, then judged against it.
        with Simulator(target, what=repr(cell.model)) as sim:
            model = sim.model(cell.model, dtype, cell.image_size, num_classes=num_classes_of(data),
                              check=lambda meta: weights.append(check_weights_on(meta, cell.model, cell.weights)))
            row.env.update(provenance(weights[0], data))
            batches = [sim.batch(model, cell.batch_size, dtype, cell.image_size, cell.seq_len)
                       for _ in range(cell.num_batches)]
            fn = build_cell(cell, model, batches, SimPhaseHooks(sim), row)
            phase = get_phase(cell.phase)
            warmup = min(cell.warmup, 1) if phase.keeps_state else 0
            if phase.trains:  # the second step, as on a device (fn.steps: none for frozen)
                warmup = min(fn.steps - 1, 1) if fn.steps else 0
                fn = fn if fn.steps else _evaluation(fn)
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
        limits = [(b, w) for b, w in ((target.memory_bytes, "the card's"), (cell.memory_budget, "the budget of"))
                  if b is not None]
        if limits:
            limit, what = min(limits)
            if over(stats.highest_bytes, limit):
                mark_oom(row, stats.highest_bytes, limit, what, target.device_name())


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

    def train_step(self, model, batch, mask, knobs, trainer=None, lr: float = 1e-3):
        fn = _train_step(self.sim, model, batch, mask, knobs, trainer, lr)
        if fn.scaler is not None:
            fn.scaler = _FakeScaler("cpu")  # the sim's fake tensors are CPU tensors
        return fn

    def select_trainable(self, model, budget, scope):
        from fps_profile.sim.masks import trainable_counts

        return sum(trainable_counts(model, budget, scope).values())

    def finetune_mask(self, model, batches, cell, budget, options):
        return self.train_mask(model, batches, cell, budget, options), None

    def finetune_feed(self, cell, model, batches, steps):
        from fps_profile.measure.feed import cycling_feed

        return cycling_feed(batches)


def _evaluation(ft):
    """``frozen`` on the sim: one forward of a batch in eval mode, as its evaluation runs."""
    from fps_profile.measure import phases

    return phases.inference_fn(ft.model, ft.feed.train(0)[0], ft.knobs)


class _FakeScaler(torch.amp.GradScaler):
    """A ``GradScaler`` whose step never reads ``found_inf`` (a fake tensor has no value):
    the optimizer steps, as it does on every finite step on the GPU; scaling, unscaling
    and the inf checks still run, so their memory counts."""

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)


def _train_step(sim, model, batch, mask, knobs, trainer=None, lr=1e-3):
    """The ``train_step`` of ``trainer`` (:func:`fps_profile.measure.phases.trainer_fn`), built on a
    host mask, with every real tensor it made then replaced by a fake one of the same size.

    A sparse step counts and indexes the mask's entries (``make_sparse_trainable``; PEFT SHiRA's
    ``torch.where`` over a 0/1 mask), which a fake mask cannot answer, so it is built with real
    tensors. Whatever real tensor that leaves in the model (index buffers, SHiRA's deltas and
    indices, on the GPU in a real run) or in the optimizer is then swapped for a fake one, so it
    counts, and so is a fake tensor of another fake mode (a ``deepcopy`` outside the sim's mode
    makes one: PEFT's copy of a ``modules_to_save`` module); ops on the fake weights made fake
    tensors of the sim's mode already.
    """
    from fps_profile.measure import phases
    from fps_profile.sim.fake import real_tensors

    build = phases.trainer_fn(trainer)
    if mask is None:
        return build(model, *batch, lr=lr, knobs=knobs)
    with real_tensors():
        fn = build(model, *batch, mask=mask, lr=lr, knobs=knobs)
    swapped: dict[int, torch.Tensor] = {}

    def fake(t):
        if not isinstance(t, torch.Tensor) or getattr(t, "fake_mode", None) is sim.fake_mode:
            return t
        if id(t) not in swapped:
            new = torch.empty(t.shape, dtype=t.dtype)
            swapped[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(t, torch.nn.Parameter) else new
        return swapped[id(t)]

    for module in fn.model.modules():
        for table in (module._parameters, module._buffers):
            for name, t in list(table.items()):
                table[name] = fake(t)
        for name, value in vars(module).items():  # plain dicts of tensors (SHiRA's indices)
            if not name.startswith("_") and isinstance(value, dict) and any(isinstance(t, torch.Tensor)
                                                                            for t in value.values()):
                value.update({k: fake(t) for k, t in value.items()})
    for group in fn.optimizer.param_groups:
        group["params"] = [fake(p) for p in group["params"]]
    fn.params = [fake(p) for p in fn.params]
    return fn
