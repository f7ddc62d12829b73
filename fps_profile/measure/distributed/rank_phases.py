"""A cell's phase on one FSDP2 rank: the callable that real ranks and the sim's simulated rank run alike.

:func:`rank_batches` gives a rank its own part of every global batch (``batch_size``
samples per rank: the global batch is ``batch_size x world_size``) as a copy, so that
the rank holds only its samples, as one that loads its own data does. :func:`prepare_rank`
builds the phase on the sharded model:

``select``       :func:`fps_profile.select` on the rank's batches (its shards' mask);
``inference``    a no-grad eval forward of the rank's batch (FSDP2 all-gathers block by block);
``train_floor``  forward, loss and backward; each reduced shard gradient dropped as FSDP2 writes it;
``train_step``   :class:`~fps_profile.measure.distributed.sparse.ShardedTrainStep`: sparse with the
                 selector's mask (built outside the measured run by ``train_mask``), full without one.

Amp, checkpointing and micro-batches are not applied on sharded ranks (yet): such a cell
fails with a one-line :class:`~fps_profile.errors.UserError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fps_profile.errors import UserError

PHASES = ("select", "inference", "train_floor", "train_step")


def is_sharded_cell(cell) -> bool:
    """Whether ``cell`` runs under FSDP2: world size above 1, or any offload (FSDP2 at world size 1)."""
    return int(getattr(cell, "world_size", None) or 1) > 1 or bool(getattr(cell, "offload", None))


def world_size_of(cell) -> int:
    """The cell's world size (1 for rows written before the axis existed)."""
    return int(getattr(cell, "world_size", None) or 1)


def check_cell(cell) -> None:
    """Refuse what sharded ranks do not run (one line)."""
    if cell.phase not in PHASES:
        raise UserError(f"phase {cell.phase!r} is not run on sharded ranks ({', '.join(PHASES)})")
    if cell.amp or cell.checkpointing or cell.micro_batch:
        raise UserError("sharded cells (--world-size above 1 or --offload) run without amp, checkpointing "
                        "or micro-batches (for now)")


def rank_batches(batches: Sequence, rank: int, world_size: int) -> list:
    """This rank's slice of every global batch, copied so that the global batch can be dropped."""
    from fps_profile.measure.distributed.shard import local_batch

    out = []
    for batch in batches:
        part = local_batch(batch, rank, world_size)
        items = part if isinstance(part, tuple) else (part,)
        items = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in items)
        out.append(items if isinstance(part, tuple) else items[0])
    return out


@dataclass
class RankPhase:
    """A phase ready to run on a rank.

    Attributes:
        fn: Called for warm-up, the memory-tracked run and the timed runs.
        trainable: This rank's trainable scalars, where known before the run (None: from the mask it returns).
        optimizer: The train step's optimizer (its state is recognised in breakdowns).
    """

    fn: Callable[[], Any]
    trainable: int | None
    optimizer: torch.optim.Optimizer | None = None


def _select_mask(model, local, cell, budget, options):
    from fps_profile.measure.phases import select_fn

    return select_fn(model, local, cell.selector, budget, cell.scope, options, seed=cell.seed)()


def prepare_rank(cell, model: nn.Module, local: Sequence, *, train_mask: Callable | None = None,
                 counts: Callable | None = None) -> RankPhase:
    """Build ``cell.phase`` on a sharded ``model`` and this rank's batches ``local`` (nothing measured yet).

    Args:
        cell: The cell (its phase, selector, budget, scope and options).
        model: The sharded model (:func:`~fps_profile.measure.distributed.shard.shard_model`).
        local: This rank's batches (:func:`rank_batches`).
        train_mask: ``(model, local, cell, budget, options) -> mask`` for a sparse train step
            (default: the selector run on the sharded model; the sim gives a mask with the
            budget's counts).
        counts: ``mask -> {name: global trainable count}`` where the caller knows them without a
            collective (the sim, whose process group sums nothing); None: all-reduced.
    """
    from fps_profile.measure import phases
    from fps_profile.measure.distributed.sparse import ShardedTrainStep
    from fps_profile.selection.sharding.tensors import reshard

    check_cell(cell)
    budget = phases.BudgetSpec.parse(cell.budget) if cell.budget else phases.BudgetSpec(k=None)
    options = dict(cell.options)
    if cell.phase == "select":
        return RankPhase(phases.select_fn(model, local, cell.selector, budget, cell.scope, options,
                                          seed=cell.seed), None)
    if cell.phase == "inference":
        return RankPhase(phases.inference_fn(model, local[0][0]), 0)
    if cell.phase == "train_floor":
        reshard(model)
        return RankPhase(phases.train_floor_fn(model, *local[0]), 0)
    mask = None
    if cell.selector is not None:
        mask = (train_mask or _select_mask)(model, local, cell, budget, options)
    step = ShardedTrainStep(model, *local[0], mask=mask,
                            counts=counts(mask) if counts is not None and mask is not None else None)
    del mask
    return RankPhase(step, step.trainable, step.optimizer)


def params_local(model: nn.Module) -> int:
    """Scalars of this rank's shards (unpadded; the root's parameters resharded first: FSDP2 leaves them
    all-gathered after a forward without a backward)."""
    from fps_profile.selection.sharding.tensors import local, reshard

    reshard(model)
    return sum(local(p).numel() for p in model.parameters())
