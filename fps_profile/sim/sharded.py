"""One FSDP2 rank on the sim: a sharded cell predicted without the other ranks, GPUs or data.

:func:`measure_sharded` runs ONE rank (rank 0 by default) of a ``world_size``-rank cell in
this process, under PyTorch's fake process group (``torch.testing._internal.distributed.fake_pg``:
every collective returns at once and moves nothing), on fake tensors. FSDP2's own code runs as
on a real rank, so what it allocates and frees is what the tracker counts:

* the sharded parameters (padded to equal shards), the per-group all-gather buffer (its
  copy-in, then the unsharded parameters as views into it), freed block by block when a
  block reshards after its forward; the root, which does not reshard after forward;
* the all-gather buffer kept alive until the next group's copy-out (FSDP2's implicit
  prefetch in forward), the backward prefetch of the next block, the reduce-scatter input
  (the unsharded gradients copied in) kept until the next group's reduce-scatter, and its
  output, into which the sharded gradients are views;
* the storage resizes with which FSDP2 frees and re-allocates unsharded parameters (counted
  as :class:`~fps_profile.measure.distributed.memory.ShardedLiveBytes` counts them on a real rank);
* with ``offload="cpu"``: host and device memory apart (:mod:`fps_profile.sim.offload`).

The phase is the real ranks' (:func:`~fps_profile.measure.distributed.rank_phases.prepare_rank`);
a sparse train step gets a mask with the budget's exact counts (global counts given, since the
fake process group sums nothing). Values a collective would have decided (batch counts,
statistics seen on every rank) are read as if every rank were the simulated one
(:mod:`fps_profile.selection.sharding.values`). Rank 0 holds the largest shard of every parameter
(FSDP2's chunks never grow with the rank), so its peak is the largest rank's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fps_profile.errors import UserError


@contextlib.contextmanager
def fake_world(world_size: int, rank: int = 0):
    """A default process group of ``world_size`` ranks, this process being ``rank``, whose collectives do nothing."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise UserError("the sim runs a sharded cell in a process without a process group of its own")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _mesh(world_size: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():  # the mesh's rank table is a real tensor
        return init_device_mesh("cpu", (world_size,))


def _train_mask(model, local, cell, budget, options):
    from fps_profile.selection.selectors import create
    from fps_profile.sim.fake import real_tensors
    from fps_profile.sim.masks import synthetic_mask

    create(cell.selector, **options)  # the options fail here as they would on a device
    with real_tensors():
        return synthetic_mask(model, budget, cell.scope)


def _fake_indices(step, where) -> None:
    """The sparse step's index tensors as fake ones of the same size (real ones the tracker would miss)."""
    if step.sparse is None:
        return
    with where:
        for name, index in step.sparse.index.items():
            step.sparse.index[name] = torch.empty(index.shape, dtype=index.dtype)


@dataclass
class SimulatedRank:
    """One rank of a sharded cell, built on a simulator and ready to measure (:func:`simulated_rank`).

    Attributes:
        sim: The :class:`~fps_profile.sim.session.Simulator` (its tracker counts this rank's device memory).
        model: The sharded model (fake tensors).
        local: This rank's batches.
        phase: The :class:`~fps_profile.measure.distributed.rank_phases.RankPhase` to run.
        host: Host memory under offload (:class:`~fps_profile.sim.offload.HostBytes`), else None.
        counts: Global trainable counts per tensor of a sparse step's mask (else empty).
        world_size, rank: Which rank of how many.
    """

    sim: object
    model: torch.nn.Module
    local: list
    phase: object
    host: object | None
    counts: dict
    world_size: int
    rank: int


@contextlib.contextmanager
def simulated_rank(cell, rank: int = 0) -> Iterator[SimulatedRank]:
    """Build ``rank`` of sharded ``cell`` on a simulator under a fake process group (nothing measured yet).

    Raises:
        UserError: Bad target, model, phase or knobs, or a model that needs tensor values.
    """
    from fps_profile.measure.distributed.rank_phases import check_cell, prepare_rank, rank_batches, world_size_of
    from fps_profile.measure.distributed.shard import shard_model
    from fps_profile.measure.targets import get_target
    from fps_profile.models import parse_dtype
    from fps_profile.sim.fake import real_tensors
    from fps_profile.sim.offload import HostBytes, host_moves
    from fps_profile.sim.session import Simulator

    check_cell(cell)
    target, dtype, world_size = get_target(cell.device), parse_dtype(cell.dtype), world_size_of(cell)
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} does not exist at world size {world_size}")
    host = HostBytes() if cell.offload and target.is_cuda else None  # on a CPU rank the host is the device
    with contextlib.ExitStack() as stack:
        stack.enter_context(fake_world(world_size, rank))
        mesh = _mesh(world_size)
        # The budget holds from the sharding on: a rank builds the model whole (on the meta device) first.
        sim = stack.enter_context(Simulator(target, budget_bytes=None, what=repr(cell.model)))
        # torch.tensor(data) as a real rank's tracker sees it: on a GPU a host tensor (Adam's step counters ...);
        # on a CPU rank counted where it exists before the measured run (SimTensorBytes.count_literals).
        sim.tracker.count_literals = False if target.is_cuda else "existing"
        # A CPU rank holds the mesh's rank table as a live CPU tensor; on a GPU it is a host tensor.
        rank_table = torch.empty_like(mesh.mesh) if not target.is_cuda else None  # noqa: F841 (kept alive)
        if host is not None:
            sim.tracker.host = host
            stack.enter_context(host_moves(host))
            stack.callback(host.close)
        model = sim.model(cell.model, dtype, cell.image_size)
        batches = [sim.batch(model, cell.batch_size * world_size, dtype, cell.image_size, cell.seq_len)
                   for _ in range(cell.num_batches)]
        local = rank_batches(batches, rank, world_size)
        del batches
        with sim.translating_errors():
            shard_model(model, offload=bool(cell.offload), mesh=mesh)
        sim.tracker.budget_bytes = cell.memory_budget
        counts: dict[str, int] = {}

        def count(mask) -> dict[str, int]:
            counts.update({name: mask.count(name) for name in mask})
            return counts

        sparse = cell.phase == "train_step" and cell.selector is not None
        with real_tensors() if sparse else contextlib.nullcontext(), sim.translating_errors():
            prepared = prepare_rank(cell, model, local, train_mask=_train_mask, counts=count)
        if sparse:
            _fake_indices(prepared.fn, host.allocating("host") if host is not None else contextlib.nullcontext())
        yield SimulatedRank(sim, model, local, prepared, host, counts, world_size, rank)


def measure_sharded(cell, row, *, rank: int = 0) -> None:
    """Fill ``row`` with the prediction of sharded ``cell`` on its simulated ``rank`` (see the module docstring).

    Raises:
        UserError: Bad target, model, phase or knobs, or a model that needs tensor values.
        torch.OutOfMemoryError: Beyond ``cell.memory_budget`` (the runner records ``oom``).
    """
    from fps_profile.measure.distributed.memory import rank_peaks, storage_resizes
    from fps_profile.measure.distributed.rank_phases import params_local
    from fps_profile.rows.phases import get_phase
    from fps_profile.sim.session import selector_passes
    from fps_profile.sim.masks import trainable_counts

    start = time.perf_counter()
    with simulated_rank(cell, rank) as r:
        phase = get_phase(cell.phase)
        passes = phase.passes if phase.passes is not None else selector_passes(cell.selector)
        warmup = min(cell.warmup, 1) if phase.keeps_state else 0
        with storage_resizes(r.sim.tracker):
            stats = r.sim.measure(r.phase.fn, warmup=warmup, workspaces=() if warmup else passes)
        row.peak_allocated_bytes = stats.peak_bytes
        row.host_peak_bytes = r.host.peak if r.host is not None else None
        row.flops, row.time_floor_s = stats.flops, stats.time_floor_s
        row.params_total = sum(p.numel() for p in r.model.parameters())
        if cell.phase == "select":
            row.params_trainable = sum(trainable_counts(r.model, _budget(cell), cell.scope).values())
        elif cell.phase == "train_step":
            row.params_trainable = sum(r.counts.values()) if r.counts else row.params_total
        else:
            row.params_trainable = 0
        local_params, trainable_local = params_local(r.model), r.phase.trainable
        target = r.sim.target
    row.wall_time_s, row.wall_times_s = None, []
    row.env["ranks"] = rank_peaks([stats.peak_bytes]).to_dict() | {
        "world_size": r.world_size, "simulated_rank": rank, "peak_spread_bytes": None, "offload": cell.offload,
        "params_local": [local_params], "trainable_local": [trainable_local]}
    row.env["sim"] = {"target": target.name, "backend": target.backend, "fsdp2": "fake process group, one rank",
                      "cublas_workspace_bytes": target.cublas_workspace_bytes,
                      "allocator": "caching" if target.is_cuda else "exact",
                      "flops_by_kind": {f"{k}:{d}": n for (k, d), n in sorted(stats.flop_counts.items())},
                      "seconds": round(time.perf_counter() - start, 3)}


def _budget(cell):
    from fps_profile.measure.phases import BudgetSpec

    return BudgetSpec.parse(cell.budget) if cell.budget else BudgetSpec(k=None)
