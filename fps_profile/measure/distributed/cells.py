"""One cell measured on N CPU ranks under FSDP2: what the worker will call for ``world_size > 1``.

:func:`measure_cell` takes the runner's :class:`~fps_profile.measure.runner.Cell` (its
``batch_size`` is the global batch), runs :func:`measure_rank` on every rank
(:func:`~fps_profile.measure.distributed.launch.run_ranks`) and returns one result row:
``peak_allocated_bytes`` is the largest rank's peak (what each device must hold,
never a sum), ``env["ranks"]`` has every rank's peak, the spread and the world
size, and the wall times are the slowest rank's per repeat.

Phases: ``select`` (the rank's mask of its shards), ``train_step`` (sparse with a
selector, full without). Each rank builds the same model (the cell's seed), shards it,
takes its slice of the global batches, warms up, takes one memory-tracked run
(:class:`~fps_profile.measure.distributed.memory.ShardedLiveBytes`) and ``repeats``
timed runs, a barrier before each.
"""

from __future__ import annotations

import time

import torch

from fps_profile.errors import UserError


def _prepare(cell, model, batches, rank: int, world_size: int):
    """The callable a rank runs for ``cell``, and this rank's trainable scalars (None: from the mask)."""
    from fps_profile.measure.distributed.shard import local_batches
    from fps_profile.measure.distributed.sparse import ShardedTrainStep
    from fps_profile.measure.phases import BudgetSpec, select_fn

    local = local_batches(batches, rank, world_size)
    budget = BudgetSpec.parse(cell.budget) if cell.budget else BudgetSpec(k=None)
    if cell.phase == "select":
        return select_fn(model, local, cell.selector, budget, cell.scope, dict(cell.options), seed=cell.seed), None
    if cell.phase == "train_step":
        mask = None
        if cell.selector is not None:
            mask = select_fn(model, local, cell.selector, budget, cell.scope, dict(cell.options), seed=cell.seed)()
        step = ShardedTrainStep(model, *local[0], mask=mask)
        return step, step.trainable
    raise UserError(f"phase {cell.phase!r} is not measured on sharded ranks (select, train_step)")


def measure_rank(rank: int, world_size: int, cell_json: str, offload: bool = False) -> dict:
    """Measure ``cell_json`` on this rank (runs inside :func:`~fps_profile.measure.distributed.launch.run_ranks`).

    Returns:
        ``{"peak": bytes, "times": [s, ...], "trainable": n, "params_local": n}`` for this rank.
    """
    import torch.distributed as dist

    from fps_profile.measure.distributed.memory import ShardedLiveBytes
    from fps_profile.measure.distributed.shard import shard_model
    from fps_profile.selection.sharding.tensors import local
    from fps_profile.selection.mask import Mask
    from fps_profile.measure.inputs import build_inputs
    from fps_profile.models import parse_dtype
    from fps_profile.rows.cell import Cell

    cell = Cell.from_json(cell_json)
    if cell.device != "cpu" or cell.amp or cell.checkpointing or cell.micro_batch:
        raise UserError("sharded cells run on the cpu, without amp, checkpointing or micro-batches (for now)")
    built = build_inputs(cell, torch.device("cpu"), parse_dtype(cell.dtype))  # every rank: the same seed, model, data
    model, batches = built.model, built.batches
    shard_model(model, offload=offload)
    fn, trainable = _prepare(cell, model, batches, rank, world_size)
    del batches
    for _ in range(cell.warmup):
        fn()
    dist.barrier()
    with ShardedLiveBytes("cpu") as live:
        out = fn()
    if isinstance(out, Mask):  # a select run's mask gives its trainable count
        trainable = out.stats().trainable
    del out
    times = []
    for _ in range(cell.repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"peak": live.peak, "times": times, "trainable": trainable,
            "params_local": sum(local(p).numel() for p in model.parameters())}


def measure_cell(cell, world_size: int, offload: bool = False, timeout_s: float = 1800.0):
    """One result row for ``cell`` measured on ``world_size`` CPU ranks (see the module docstring).

    A rank's out-of-memory or error becomes the row's status, as in :func:`fps_profile.measure.runner.measure`.
    """
    from fps_profile.measure import env
    from fps_profile.measure.distributed.launch import RankError, RankTimeout, run_ranks
    from fps_profile.measure.distributed.memory import rank_peaks
    from fps_profile.trackers import median

    row = cell.empty_row(env=env.collect(cell.device))
    try:
        ranks = run_ranks(measure_rank, world_size, args=(cell.to_json(), offload), timeout_s=timeout_s)
    except RankTimeout as exc:
        row.status, row.error = "timeout", str(exc)
        return row
    except RankError as exc:
        oom = "can't allocate memory" in exc.reason or "out of memory" in exc.reason or "SIGKILL" in exc.reason
        row.status, row.error = ("oom" if oom else "error"), str(exc)
        return row
    except Exception as exc:  # noqa: BLE001 - a rank's UserError, recorded as data like any failure
        from fps_profile.measure.runner import one_line

        row.status, row.error = "error", one_line(exc)
        return row
    peaks = rank_peaks(r["peak"] for r in ranks)
    row.peak_allocated_bytes = peaks.max
    row.wall_times_s = [max(ts) for ts in zip(*(r["times"] for r in ranks))]
    row.wall_time_s = median(row.wall_times_s)
    row.params_total = sum(r["params_local"] for r in ranks)
    row.params_trainable = sum(r["trainable"] or 0 for r in ranks)
    row.env["ranks"] = peaks.to_dict() | {"offload": offload, "params_local": [r["params_local"] for r in ranks],
                                         "trainable_local": [r["trainable"] for r in ranks]}
    return row
