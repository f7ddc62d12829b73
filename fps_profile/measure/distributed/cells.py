"""One cell measured on N ranks under FSDP2: what the cpu and cuda backends run for a sharded cell.

:func:`measure_cell` takes the runner's :class:`~fps_profile.rows.cell.Cell` (``batch_size`` samples
per rank, ``world_size`` ranks, ``offload``), runs :func:`measure_rank` on every rank
(:func:`~fps_profile.measure.distributed.launch.run_ranks`: gloo on CPU ranks; on ``cuda`` one
GPU per rank, NCCL for CUDA tensors and gloo for the CPU ones) and returns one result row.
Memory is per rank, never summed: ``peak_allocated_bytes`` (and every other memory field) is the
largest rank's, ``env["ranks"]`` has every rank's peak, the spread and the world size; the wall
times are the slowest rank's per repeat.

Each rank builds the same model and global batches (the cell's seed, weights and data), shards it,
keeps its own part of the batches
(:func:`~fps_profile.measure.distributed.rank_phases.rank_batches`), builds the phase
(:func:`~fps_profile.measure.distributed.rank_phases.prepare_rank`), warms up, takes one
memory-tracked run (CPU: :class:`~fps_profile.measure.distributed.memory.ShardedLiveBytes`;
CUDA: ``max_memory_allocated`` and NVML) and ``repeats`` timed runs, a barrier before each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os

import torch

from fps_profile.errors import UserError

#: Row fields taken as the largest rank's value.
PER_RANK_MAX = ("peak_allocated_bytes", "peak_reserved_bytes", "nvml_peak_used_bytes", "nvml_process_peak_bytes",
                "rss_peak_bytes", "host_peak_bytes")


_MESHES: dict[tuple[str, int], object] = {}


def rank_mesh(device_type: str, world_size: int):
    """This process's 1-D device mesh over every rank (one per process: each new mesh would leave the
    previous one's rank table alive in torch's mesh registry)."""
    from torch.distributed.device_mesh import init_device_mesh

    key = (device_type, world_size)
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(device_type, (world_size,))
    return _MESHES[key]


def _device(cell) -> torch.device:
    if cell.device == "cpu":
        return torch.device("cpu")
    if cell.device in ("cuda", "cuda:0"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    raise UserError(f"sharded cells run on cpu or cuda (one GPU per rank: --device cuda), not {cell.device!r}")


@contextlib.contextmanager
def _frees_by_refcount():
    """No automatic garbage collection inside: a collection that ran at a moment set by allocation counts
    (other threads' included) would free cyclic garbage (autograd graphs, FSDP2 state) at a different point
    of the run on each rank and each run; a rank's peak moved by one gradient buffer from run to run. The
    sim runs with collections off as well (:class:`fps_profile.sim.session.Simulator`)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _trackers(stack: contextlib.ExitStack, device: torch.device, budget: int | None) -> dict:
    from fps_profile.measure.distributed.memory import ShardedLiveBytes
    from fps_profile.trackers import CudaAllocatorPeak, NvmlSampler, RssPeak

    out = {"rss": stack.enter_context(RssPeak())}
    if device.type == "cuda":
        out["cuda"] = stack.enter_context(CudaAllocatorPeak(device))
        out["nvml"] = stack.enter_context(NvmlSampler(device.index or 0))
    else:
        out["live"] = stack.enter_context(ShardedLiveBytes("cpu", budget_bytes=budget))
    return out


def _figures(t: dict) -> dict:
    if "live" in t:
        return {"peak_allocated_bytes": t["live"].peak, "rss_peak_bytes": t["rss"].peak}
    return {"peak_allocated_bytes": t["cuda"].peak_allocated, "peak_reserved_bytes": t["cuda"].peak_reserved,
            "nvml_peak_used_bytes": t["nvml"].peak_used, "nvml_process_peak_bytes": t["nvml"].peak_process,
            "rss_peak_bytes": t["rss"].peak}


def measure_rank(rank: int, world_size: int, cell_json: str) -> dict:
    """Measure ``cell_json`` on this rank (runs inside :func:`~fps_profile.measure.distributed.launch.run_ranks`).

    Returns:
        ``{"figures": {field: value}, "times": [s, ...], "trainable": n, "params_local": n}`` for this rank.
    """
    import torch.distributed as dist

    from fps_profile.measure.distributed.rank_phases import check_cell, params_local, prepare_rank, rank_batches
    from fps_profile.measure.distributed.shard import shard_model
    from fps_profile.measure.inputs import build_inputs
    from fps_profile.models import parse_dtype
    from fps_profile.rows.cell import Cell
    from fps_profile.selection.mask import Mask
    from fps_profile.trackers import time_repeats

    cell = Cell.from_json(cell_json)
    check_cell(cell)
    device = _device(cell)
    if device.type == "cuda":
        from fps_profile.trackers import limit_memory

        torch.cuda.set_device(device)
        if cell.memory_budget is not None:
            limit_memory(device, cell.memory_budget)
    # Every rank: the same seed, model and global batches (batch_size samples per rank).
    built = build_inputs(dataclasses.replace(cell, batch_size=cell.batch_size * world_size), device,
                         parse_dtype(cell.dtype))
    model, batches = built.model, built.batches
    local = rank_batches(batches, rank, world_size)
    del batches, built  # the global batches: only this rank's part stays alive
    shard_model(model, offload=bool(cell.offload), mesh=rank_mesh(device.type, world_size))
    prepared = prepare_rank(cell, model, local)
    fn, trainable = prepared.fn, prepared.trainable
    with _frees_by_refcount():
        for _ in range(cell.warmup):
            fn()
        gc.collect()
        dist.barrier()
        with contextlib.ExitStack() as stack:
            trackers = _trackers(stack, device, cell.memory_budget)
            out = fn()
    if isinstance(out, Mask):  # a select run's mask gives its trainable count
        trainable = out.stats().trainable
    del out
    times = []
    for _ in range(cell.repeats):
        dist.barrier()
        times += time_repeats(fn, device, warmup=0, repeats=1)
    return {"figures": _figures(trackers), "times": times, "trainable": trainable,
            "params_local": params_local(model)}


def _failed(row, exc: BaseException) -> None:
    from fps_profile.measure.distributed.launch import RankError, RankTimeout
    from fps_profile.measure.runner import one_line

    if isinstance(exc, RankTimeout):
        row.status, row.error = "timeout", str(exc)
    elif isinstance(exc, RankError):
        oom = any(s in exc.reason for s in ("can't allocate memory", "out of memory", "OutOfMemoryError", "SIGKILL"))
        row.status, row.error = ("oom" if oom else "error"), str(exc)
    else:  # a rank's UserError, recorded as data like any failure
        row.status, row.error = "error", one_line(exc)


def measure_cell(cell, row=None, timeout_s: float = 1800.0):
    """Fill ``row`` (default: a new one) with ``cell`` measured on ``cell.world_size`` ranks; returns it.

    A rank's out-of-memory, error or time-out becomes the row's status, as in
    :func:`fps_profile.measure.runner.measure`; every rank process is gone when it returns.
    """
    from fps_profile.measure import env
    from fps_profile.measure.distributed.launch import run_ranks
    from fps_profile.measure.distributed.memory import rank_peaks
    from fps_profile.measure.distributed.rank_phases import world_size_of
    from fps_profile.trackers import median

    world_size = world_size_of(cell)
    row = row if row is not None else cell.empty_row(env=env.collect(cell.device))
    backend = "gloo" if cell.device == "cpu" else "cpu:gloo,cuda:nccl"
    try:
        ranks = run_ranks(measure_rank, world_size, args=(cell.to_json(),), timeout_s=timeout_s, backend=backend)
    except Exception as exc:  # noqa: BLE001 - recorded as data
        _failed(row, exc)
        return row
    for field in PER_RANK_MAX:
        values = [r["figures"].get(field) for r in ranks]
        if all(v is not None for v in values):
            setattr(row, field, max(values))
    peaks = rank_peaks(r["figures"]["peak_allocated_bytes"] for r in ranks)
    row.wall_times_s = [max(ts) for ts in zip(*(r["times"] for r in ranks))]
    row.wall_time_s = median(row.wall_times_s) if row.wall_times_s else None
    row.params_total = sum(r["params_local"] for r in ranks)
    row.params_trainable = sum(r["trainable"] or 0 for r in ranks)
    row.env["ranks"] = peaks.to_dict() | {"offload": cell.offload, "params_local": [r["params_local"] for r in ranks],
                                         "trainable_local": [r["trainable"] for r in ranks],
                                         "rss_peaks_bytes": [r["figures"].get("rss_peak_bytes") for r in ranks]}
    return row
