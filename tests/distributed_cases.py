"""What tests/test_distributed.py runs on each rank (``run_ranks`` imports this module by name).

Every rank builds the same tiny model (seeded), computes the single-process
reference on the *global* batches itself (no communication), shards the model,
runs the sharded version on its slice and returns what the test compares
(rank 0's copy is what the tests read; the gathered masks are the same on every rank).
"""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import time

import torch
from torch import nn

from conftest import make_batches, make_tiny_vit

SELECTORS = ("magnitude", "random", "fps", "wanda", "snip", "gps")
BUDGETS = ({"k": 2}, {"fraction": 0.05})


# ----------------------------------------------------------------------------- models and data

def tiny_lm(name: str) -> nn.Module:
    """A tiny ``hf:`` model without dropout (GPT-2's 0.1 would make every gradient pass random)."""
    from fps_profile.models.hf import build_lm

    torch.manual_seed(0)
    model = build_lm(name)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def grouped_convnet() -> nn.Module:
    """Conv, grouped conv (9 rows in 3 groups: 2 ranks hold rows 0-4 and 5-8, so a shard starts
    inside a group), linear classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 9, 3, padding=1), nn.Conv2d(9, 9, 3, padding=1, groups=3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(9, 5))


def model_and_batches(kind: str):
    """``(model, global batches, options for gps)`` of a test model: 2 batches of 4 samples."""
    if kind == "vit":
        return make_tiny_vit(), make_batches(2, 4), {}
    if kind == "conv":
        gen = torch.Generator().manual_seed(0)
        batches = [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 5, (4,), generator=gen))
                   for _ in range(2)]
        return grouped_convnet(), batches, {"loss": "ce"}  # SupCon needs a timm model
    from fps_profile.models.hf import token_batches

    model = tiny_lm(kind)
    return model, token_batches(model, 4, 16, num_batches=2), {}


# ----------------------------------------------------------------------------- single-process scores

def scores_of(model: nn.Module, batches, selector: str, **options) -> dict[str, torch.Tensor]:
    """Every ranked tensor's scores from one process's selector, as ``select`` computes them."""
    from fps_profile.selection.scope import Role, assign_roles
    from fps_profile.selection.batches import Batches, left_as_found
    from fps_profile.selection.selectors import Target, create

    roles = assign_roles(model, "gps")
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], m, a) for n, (r, m, a) in roles.items() if r is Role.RANKED]
    sel = create(selector, **options)
    first = next(iter(params.values()))
    with left_as_found(model):
        sel.prepare(model, Batches(batches, first.device, first.dtype), targets)
        out = {t.name: sel.score(t).detach().clone() for t in targets}
        sel.release()
    return out


# ----------------------------------------------------------------------------- selection

def select_case(rank: int, world_size: int, kinds: list[tuple[str, bool, bool]]) -> dict:
    """For each ``(model kind, shard Conv1D by output, offload)``: every selector and budget's
    single-process scores and the sharded masks gathered, plus facts about the shards."""
    from fps_profile import select
    from fps_profile.selection.sharding.masks import gather_mask
    from fps_profile.measure.distributed.shard import local_batches, shard_model
    from fps_profile.selection.sharding.tensors import shard_range
    from fps_profile.models.parts import output_axis

    out = {}
    for kind, by_output, offload in kinds:
        model, batches, gps_options = model_and_batches(kind)
        options = {s: (gps_options if s == "gps" else {}) for s in SELECTORS}
        reference = {s: scores_of(model, batches, s, **options[s]) for s in SELECTORS if s != "random"}
        reference_random = {str(b): select(model, None, "random", **b) for b in BUDGETS}
        axes = {n: output_axis(model.get_submodule(n.rpartition(".")[0]), "weight")
                for n, _ in model.named_parameters() if n.endswith("weight")}
        shard_model(model, by_output=by_output, offload=offload)
        local = local_batches(batches, rank, world_size)
        got = {}
        for s in SELECTORS:
            for b in BUDGETS:
                mask = select(model, local if s not in ("magnitude", "random") else None, s, **b, **options[s])
                got[(s, str(b))] = (gather_mask(mask, model), dict(mask.meta))
        placements = {n: shard_range(p)[0] for n, p in model.named_parameters()}
        out[(kind, by_output, offload)] = {"reference": reference, "random": reference_random, "masks": got,
                                          "axes": axes, "placements": placements}
    return out


# ----------------------------------------------------------------------------- sparse step

STEPS = 3


def sparse_case(rank: int, world_size: int, kinds: list[tuple[str, bool]]) -> dict:
    """For each ``(model kind, offload)``: STEPS sparse AdamW steps on one process and on the shards."""
    from fps_profile import select
    from fps_profile.measure.distributed.shard import local_batch, shard_model
    from fps_profile.measure.distributed.sparse import ShardedTrainStep
    from fps_profile.selection.sharding.tensors import local
    from fps_profile.measure.phases import train_step_fn
    from fps_profile.selection.sparse import merge_sparse

    out = {}
    for kind, offload in kinds:
        model, batches, _ = model_and_batches(kind)
        batch = batches[0]
        mask = select(model, batches, "fps", k=2)
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}

        # One process: the project's sparse step, with each step's (clipped) gradients recorded.
        ref = copy.deepcopy(model)
        step = train_step_fn(ref, *batch, mask=mask)
        names = [n for n in initial if mask.count(n)]
        grads = []

        def record(optimizer, *_):
            grads.append({n: p.grad.detach().clone() for n, p in zip(names, step.params)})

        step.optimizer.register_step_pre_hook(record)
        first = {}  # the first step's gradients before clipping
        def keep_first(name):
            def hook(t):
                first.setdefault(name, t.grad.detach().clone())
            return hook

        for n, p in zip(names, step.params):
            p.register_post_accumulate_grad_hook(keep_first(n))
        for _ in range(STEPS):
            step()
        merge_sparse(ref)
        dense_grads = []
        for g in grads:
            d = {}
            for n in names:
                if mask.count(n) == mask.entry(n).numel:
                    d[n] = g[n]
                else:
                    d[n] = torch.zeros(mask.entry(n).numel).index_put_((mask.entry(n).positions(),), g[n])
                    d[n] = d[n].view(mask.entry(n).shape)
            dense_grads.append(d)

        # The shards.
        shard_model(model, offload=offload)
        sharded = ShardedTrainStep(model, *local_batch(batch, rank, world_size), mask=mask)
        facts = {"frozen_grads": [], "partial_grads": [], "state_numel": 0, "values_numel": 0,
                 "whole_numel": sum(local(p).numel() for p in sharded.sparse.whole)}
        for i in range(STEPS):
            sharded.backward()
            if i == 0:
                sharded_first = _gather_grads(model, sharded, names, world_size)
            sharded.update()
            if i == 0:
                facts["state_numel"] = sum(local(t).numel() for s in sharded.optimizer.state.values()
                                           for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
        facts["values_numel"] = sum(v.numel() for v in sharded.sparse.values.values())
        # After a backward: no gradient on frozen or partly trainable shards, only on values and whole
        # ones, and nothing else left alive by it (FSDP2's buffers freed): live bytes grow by the gradients.
        from fps_profile.measure.distributed.memory import ShardedLiveBytes

        gc.collect()
        with ShardedLiveBytes("cpu") as live:
            before = live.current
            sharded.backward()
            gc.collect()
            facts["backward_leaves_bytes"] = live.current - before
        whole = sum(local(p.grad).numel() * local(p.grad).element_size() for p in sharded.sparse.whole)
        values = sharded.sparse.values.values()
        facts["grad_bytes"] = sum(v.grad.numel() * v.grad.element_size() for v in values) + whole
        for n, p in model.named_parameters():
            if n in sharded.sparse.values:
                facts["partial_grads"].append(p.grad is not None)
            elif not p.requires_grad:
                facts["frozen_grads"].append(p.grad is not None)
        sharded.optimizer.zero_grad(set_to_none=True)
        sharded.sparse.remove()
        trained = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
        first_dense = {n: (g if mask.count(n) == mask.entry(n).numel else
                           torch.zeros(mask.entry(n).numel).index_put_((mask.entry(n).positions(),), g)
                           .view(mask.entry(n).shape)) for n, g in first.items()}
        out[(kind, offload)] = {"first_grads": first_dense, "sharded_first_grads": sharded_first,
                                "initial": initial, "reference": {n: p.detach() for n, p in ref.named_parameters()},
                                "trained": trained, "mask": mask, "grads": dense_grads, "facts": facts,
                                "trainable_local": sharded.trainable}
    return out


def _gather_grads(model, sharded, names, world_size) -> dict[str, torch.Tensor]:
    """The trained tensors' gradients on the shards (values scattered into their shard), whole."""
    import torch.distributed as dist

    from fps_profile.selection.sharding.tensors import local, shard_range

    params = dict(model.named_parameters())
    out = {}
    for n in names:
        p = params[n]
        if n in sharded.sparse.values:
            v = sharded.sparse.values[n]
            g = torch.zeros(local(p).numel()).index_put_((sharded.sparse.index[n],), v.grad).view(local(p).shape)
        else:
            g = local(p.grad).clone()
        parts = [None] * world_size
        dist.all_gather_object(parts, g)
        out[n] = torch.cat(parts, dim=shard_range(p)[0])
    return out


# ----------------------------------------------------------------------------- launcher behaviour

def rank_and_sum(rank: int, world_size: int, tag: str):
    import torch.distributed as dist

    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    return rank, world_size, float(t), tag


def fail_on_rank_1(rank: int, world_size: int):
    import torch.distributed as dist

    if rank == 1:
        raise ValueError("bad value on rank one\nsecond line")
    dist.barrier()  # rank 0 waits here for the dead rank


def user_error(rank: int, world_size: int):
    from fps_profile.errors import UserError

    raise UserError("k must be an integer >= 1, not 0")


def kill_rank_0(rank: int, world_size: int):
    import signal

    import torch.distributed as dist

    if rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


def hang(rank: int, world_size: int, where: str, child: bool = False):
    """Sleep forever, leaving ``rank<r>-<pid>`` (and, with ``child``, ``child<r>-<pid>`` for a
    process the rank started) in ``where``."""
    if child:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open(os.path.join(where, f"child{rank}-{proc.pid}"), "w").close()
    open(os.path.join(where, f"rank{rank}-{os.getpid()}"), "w").close()
    time.sleep(600)


def uneven_case(rank: int, world_size: int, sizes: list[int]) -> None:
    """Select with ``sizes[rank]`` samples per batch on this rank (raises on every rank when they differ)."""
    from fps_profile import select
    from fps_profile.measure.distributed.shard import shard_model

    model = make_tiny_vit()
    shard_model(model)
    select(model, make_batches(1, sizes[rank]), "gps", k=1)


# ----------------------------------------------------------------------------- memory

def memory_case(rank: int, world_size: int) -> dict:
    """Live bytes around a no-grad forward of the sharded tiny ViT, with and without FSDP2's
    storage resizes counted, and the unsharded size of its largest block."""
    from fps_profile.measure.distributed.shard import shard_model
    from fps_profile.measure.distributed.memory import ShardedLiveBytes
    from fps_profile.selection.sharding.tensors import reshard
    from fps_profile.trackers import LiveTensorBytes

    model = make_tiny_vit()
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shard_model(model)
    images = make_batches(1, 4)[0][0][rank * 2:(rank + 1) * 2]
    with torch.no_grad():
        model(images)  # FSDP2's lazy init, outside the measured regions
    reshard(model)
    out = {"block_bytes": block_bytes, "model_bytes": model_bytes}
    for name, tracker in (("patched", ShardedLiveBytes), ("plain", LiveTensorBytes)):
        with tracker("cpu") as live:
            with torch.no_grad():
                logits = model(images)
            reshard(model)
            gc.collect()  # FSDP2's flat all-gather buffers may be held by reference cycles until a collection
            out[name] = {"baseline": live.baseline, "peak": live.peak, "after": live.current,
                         "logits": logits.untyped_storage().nbytes()}
            del logits
    return out
