"""The reductions that make sharded selection equal single-process selection on the global batch.

* FPS and Wanda: per-input-feature sums and token counts are all-reduced (sums),
  so mean ``|x|`` and ``sqrt(sum x**2)`` are those of every token of every rank
  (:func:`reduce_input_stats`); each rank then scales its own rows
  (:func:`local_stat`).
* GPS and SNIP: FSDP2 reduce-scatters the gradients with an average over the
  ranks. Each rank's loss is the mean over its slice, so with equal slices the
  average is the gradient of the global batch's mean loss; GPS accumulates those
  signed over batches (FSDP2 adds each backward's reduced shard to ``.grad``)
  and takes ``|.|`` once at the end, as in one process. GPS's SupCon loss pairs
  samples across the whole batch, so it is computed on the features of every
  rank (:func:`gather_samples`).
* Every rank must see as many batches, of equal sizes (:func:`check_batches`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from fps_profile.errors import UserError
from fps_profile.selection.sharding.tensors import shard_range
from fps_profile.selection.sharding.values import read


def reduce_input_stats(sums: dict[int, torch.Tensor], counts: dict[int, int], keys: list[int], group) -> None:
    """All-reduce (sum) the statistics of ``keys`` in place, in that order (the same on every rank).

    Raises:
        UserError: A target no rank's forward used (with the same check on every rank).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    seen = torch.tensor([int(k in sums) for k in keys], dtype=torch.int64)
    dist.all_reduce(seen, group=group)
    seen = read(seen, [world * int(k in sums) for k in keys])
    if any(0 < s < world for s in seen):
        # Every rank raises (they all see the same counts): no rank is left waiting in a collective.
        raise UserError("a ranked weight was used by the forward pass on some ranks but not on others")
    keys = [k for k, s in zip(keys, seen) if s]  # one no rank used fails in InputStats.collect
    flat = torch.cat([sums[k].reshape(-1) for k in keys]) if keys else torch.zeros(0)
    dist.all_reduce(flat, group=group)
    n = torch.tensor([counts[k] for k in keys], dtype=torch.int64)
    dist.all_reduce(n, group=group)
    start = 0
    for k, c in zip(keys, read(n, [world * counts[k] for k in keys])):
        size = sums[k].numel()
        sums[k].copy_(flat[start:start + size].view_as(sums[k]))
        counts[k] = c
        start += size


def local_stat(stat: torch.Tensor, param: torch.Tensor, out_axis: int = 0) -> torch.Tensor:
    """The part of an input-feature statistic that this rank's shard of ``param`` reads.

    ``stat`` is ``[groups, in/groups, *kernel]`` (``[1, in]`` for a ``Conv1D`` weight
    ``[in, out]``, ``out_axis=1``). A shard of output rows reads all of it, except in
    a grouped convolution, whose local rows may start inside a group: it then gets
    one statistic per local row (``[rows, in/groups, *kernel]``, as many as the
    shard's entries). A shard of input features reads its slice.
    """
    dim, start, length = shard_range(param)
    if dim is None:
        return stat
    if dim == out_axis:
        groups = stat.shape[0]
        if groups == 1 or out_axis == 1:
            return stat
        per_group = param.shape[0] // groups
        rows = torch.arange(start, start + length, device=stat.device) // per_group
        return stat.index_select(0, rows)
    if out_axis == 1:  # Conv1D sharded on dim 0, its input axis
        return stat.narrow(1, start, length)
    return stat.narrow(dim, start, length)  # stat dims 1.. line up with the weight's


class _GatherSamples(torch.autograd.Function):
    """Forward: every rank's tensor, concatenated along dim 0 in rank order.
    Backward: this rank's rows of the gradient, times the world size.

    Every rank computes the same loss ``L`` of the gathered tensor, so the gradient
    of the gathered tensor is the same everywhere; FSDP2 then averages the ranks'
    parameter gradients, dividing by the world size: the factor restores ``dL/dθ``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.rank, ctx.world, ctx.rows = dist.get_rank(group), world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mine = grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)
        return mine * ctx.world, None


def gather_samples(features: torch.Tensor, labels: torch.Tensor | None, group):
    """The global batch's features (differentiable) and labels; as given when ``group`` is None."""
    if group is None:
        return features, labels
    import torch.distributed as dist

    out = _GatherSamples.apply(features, group)
    if labels is not None:
        parts = [torch.empty_like(labels) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, labels.contiguous(), group=group)
        labels = torch.cat(parts)
    return out, labels


def check_batches(batches: Iterable, group) -> Iterator:
    """``batches`` as they are, checking with the other ranks, batch by batch, that every
    rank has one and of the same size (one small all-reduce each).

    Raises:
        UserError: On every rank alike, when the ranks' batches differ in number or size.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    it = iter(batches)
    while True:
        item = next(it, None)
        head = item[0] if isinstance(item, (tuple, list)) else item
        size = int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() else 0
        probe = torch.tensor([int(item is not None), size, -size], dtype=torch.int64)
        total = probe.clone()
        dist.all_reduce(total[:1], group=group)
        dist.all_reduce(total[1:], op=dist.ReduceOp.MAX, group=group)
        have, most, least = read(total, [world * int(item is not None), size, -size])
        least = -least
        if have not in (0, world):
            raise UserError(f"the ranks got different numbers of batches ({have} of {world} ranks have one more)")
        if not have:
            return
        if most != least:
            raise UserError(f"the ranks got batches of different sizes ({least} to {most} samples):"
                            " every rank needs as many (fps_profile.measure.distributed.local_batch)")
        yield item
