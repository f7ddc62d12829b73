"""Budgets over sharded scores: every rank decides for its own shard, as one process would for the whole.

* Per-row top-K: a shard that holds whole output rows (FSDP2's dim-0 shard of a
  ``[out, in, ...]`` weight; a ``Conv1D`` weight sharded on its output axis, dim 1)
  takes its rows' top-K locally, no communication. A shard that splits the rows
  (a ``Conv1D`` weight sharded on dim 0, its input axis; a ``Linear`` sharded on
  dim 1) exchanges each row's local top-K candidates (values and global positions,
  ``world_size x rows x K``) and keeps those of its own that are in the row's global top-K.
* Global fraction: each rank keeps its best ``n`` entries (``n`` = the global
  keep count), streaming over its shards as :class:`fps_profile.selection.budget.GlobalFraction`
  does; the global top ``n`` is among them. The ``n``-th largest score is then
  found by bisection on the scores' bit patterns (float32 as order-preserving
  integers: at most 33 steps of one all-reduce of a count), never gathering the
  scores; entries equal to it are kept in rank order until ``n`` are kept.

Masks come out local: positions in this rank's shard, shaped as the shard.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch

from fps_profile.selection.budget import Budget, GlobalFraction, PerRowTopK, stream_best
from fps_profile.selection.sharding.tensors import shard_range
from fps_profile.selection.sharding.values import is_fake
from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry, rows_cols


def sharded_entries(budget: Budget, scored, params: Mapping[str, torch.Tensor], total: int,
                    out_axes: Mapping[str, int], group) -> Iterator[tuple[str, MaskEntry]]:
    """:meth:`Budget.entries` for local scores of sharded ``params`` (name -> DTensor)."""
    if isinstance(budget, PerRowTopK):
        for name, scores in scored:
            yield name, _row_entry(budget, name, scores, params[name], out_axes.get(name, 0), group)
            del scores
    elif isinstance(budget, GlobalFraction):
        yield from _fraction_entries(budget, scored, total, group)
    else:
        raise UserError(f"{type(budget).__name__} has no sharded form")


def _row_entry(budget: PerRowTopK, name: str, scores: torch.Tensor, param: torch.Tensor, out_axis: int,
               group) -> MaskEntry:
    dim, start, _ = shard_range(param)
    _, cols = rows_cols(tuple(param.shape), out_axis)
    if budget.k > cols:  # checked on the global row, the same on every rank
        raise UserError(f"k={budget.k} is larger than a row of {name!r} ({cols} entries)")
    if dim is None or (dim == out_axis and param.dim() > 1):
        return budget.row_entry(name, scores, out_axis)  # whole rows here
    if param.dim() == 1:  # one row, split over the ranks
        return _split_rows(budget.k, name, scores.reshape(1, -1), start, scores.shape, lambda r, c: c, group)
    if param.dim() != 2:
        raise UserError(f"per-row top-k on {name!r}: a {param.dim()}-D weight sharded on dim {dim} splits its rows; "
                        "shard it on dim 0")
    if out_axis == 1:  # [in_local, out]: a row is a column
        out = scores.shape[1]
        return _split_rows(budget.k, name, scores.t(), start, scores.shape, lambda r, c: c * out + r, group)
    cols_local = scores.shape[1]
    return _split_rows(budget.k, name, scores, start, scores.shape, lambda r, c: r * cols_local + c, group)


def _split_rows(k: int, name: str, rows: torch.Tensor, start: int, local_shape, position, group) -> MaskEntry:
    """Top-``k`` of rows whose entries are spread over the ranks; ``rows`` is ``[rows, local cols]``,
    this rank's columns starting at global column ``start``; ``position(row, local col)`` is the
    flat position in the local shard."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n_rows, n_cols = rows.shape
    take = min(k, n_cols)
    vals = torch.full((n_rows, k), -math.inf, dtype=torch.float32)
    cols = torch.full((n_rows, k), -1, dtype=torch.int64)
    if take:
        v, c = rows.float().topk(take, dim=1, sorted=False)
        vals[:, :take], cols[:, :take] = v, c + start
    all_vals = [torch.empty_like(vals) for _ in range(world)]
    all_cols = [torch.empty_like(cols) for _ in range(world)]
    dist.all_gather(all_vals, vals, group=group)
    dist.all_gather(all_cols, cols, group=group)
    cand_vals, cand_cols = torch.cat(all_vals, dim=1), torch.cat(all_cols, dim=1)  # [rows, world * k]
    del all_vals, all_cols
    best = cand_vals.topk(k, dim=1, sorted=False).indices
    owner = best // k
    mine = owner == rank
    r_idx = torch.arange(n_rows).unsqueeze(1).expand_as(best)[mine]
    c_idx = cand_cols.gather(1, best)[mine] - start
    pos = position(r_idx, c_idx)
    return MaskEntry.from_positions(local_shape, pos.sort().values)


def _keys(vals: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 keys with the same order (-0.0 counts as +0.0)."""
    bits = (vals.float() + 0.0).view(torch.int32).long()
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _count(keys: torch.Tensor, at_least: int, group) -> int:
    import torch.distributed as dist

    c = torch.tensor([int((keys >= at_least).sum())], dtype=torch.int64)
    dist.all_reduce(c, group=group)
    return int(c)


def kth_key(keys: torch.Tensor, n: int, group) -> tuple[int, int]:
    """The key ``t`` of the ``n``-th largest entry over every rank's ``keys``, and how many
    keys are larger than ``t`` everywhere: bisection on counts, one all-reduce a step."""
    import torch.distributed as dist

    bounds = torch.tensor([keys.max().item() if keys.numel() else -(2**40),
                           -(keys.min().item() if keys.numel() else 2**40)], dtype=torch.int64)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX, group=group)
    hi, lo = int(bounds[0]), -int(bounds[1])
    while lo < hi:  # invariant: count(>= lo) >= n, count(>= hi + 1) < n
        mid = (lo + hi + 1) // 2
        if _count(keys, mid, group) >= n:
            lo = mid
        else:
            hi = mid - 1
    return lo, _count(keys, lo + 1, group)


def _fraction_entries(budget: GlobalFraction, scored, total: int, group) -> Iterator[tuple[str, MaskEntry]]:
    import torch.distributed as dist

    n = budget.keep(total)
    names, shapes, best_val, best_pos = stream_best(scored, n)  # this rank's best n
    if best_val is None:
        best_val, best_pos = torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    if is_fake(best_val):  # the sim: no scores to compare, see _fake_fraction_entries
        yield from _fake_fraction_entries(best_pos, names, shapes, n, total)
        return
    keys = _keys(best_val)
    del best_val
    t, above = kth_key(keys, n, group)
    ties = keys == t
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, ties.sum().reshape(1), group=group)
    before = int(sum(c for c in counts[:dist.get_rank(group)]))
    take = max(0, min(int(ties.sum()), n - above - before))
    tie_pos = best_pos[ties].sort().values[:take]  # the first ties in this rank's (tensor, position) order
    order = torch.cat([best_pos[keys > t], tie_pos]).sort().values
    del keys, best_pos, ties
    sizes = [math.prod(s) for s in shapes]
    ends = torch.tensor(sizes, dtype=torch.int64).cumsum(0)
    cuts = torch.searchsorted(order, ends).tolist()
    start = lo = 0
    for name, shape, size, cut in zip(names, shapes, sizes, cuts):
        yield name, MaskEntry.from_positions(shape, order[lo:cut] - start)
        start, lo = start + size, cut


def _fake_fraction_entries(best_pos, names, shapes, n: int, total: int) -> Iterator[tuple[str, MaskEntry]]:
    """The sim's fraction budget on one rank: its shards' share of the ``n`` kept entries, in proportion to
    their sizes (the real split depends on the scores), without the threshold's bisection (it needs values)."""
    from fps_profile.selection.budget import proportional_split

    sizes = [math.prod(s) for s in shapes]
    mine = min(len(best_pos), round(n * sum(sizes) / total)) if total else 0
    order = best_pos[:mine].sort().values
    start = lo = 0
    for name, shape, size, count in zip(names, shapes, sizes, proportional_split(mine, sizes)):
        yield name, MaskEntry.from_positions(shape, order[lo:lo + count] - start)
        start, lo = start + size, lo + count
