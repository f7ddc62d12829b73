"""Rank-local masks and the global mask they make up.

Sharded :func:`fps_profile.select` returns each rank's mask of its own shards
(positions in the shard, shaped as the shard). :func:`gather_mask` assembles the
whole model's mask (to save it, or to compare it with one process's);
:func:`shard_mask` cuts a whole mask (e.g. one loaded from a file) down to this
rank's shards.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fps_profile.selection.sharding.tensors import local_shape, reshard, shard_range
from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for size in reversed(shape):
        out.append(acc)
        acc *= size
    return out[::-1]


def _move(pos: torch.Tensor, src: tuple[int, ...], dst: tuple[int, ...], dim: int, shift: int) -> torch.Tensor:
    """Flat positions in ``src`` -> flat positions in ``dst``, index ``dim`` shifted by ``shift``."""
    out = torch.zeros_like(pos)
    rest = pos.clone()
    for d, (s_src, s_dst) in enumerate(zip(_strides(src), _strides(dst))):
        idx = torch.div(rest, s_src, rounding_mode="floor")
        rest -= idx * s_src
        out += (idx + (shift if d == dim else 0)) * s_dst
    return out


def gather_mask(mask: Mask, model: nn.Module, group=None) -> Mask:
    """The whole model's mask from every rank's local mask (a collective: call it on every rank).

    Args:
        mask: This rank's mask, as sharded ``select`` returned it.
        model: The sharded model (for its parameters' global shapes and shards).
        group: The process group (default: the default group).

    Returns:
        The same :class:`Mask` on every rank, over the parameters' global shapes.
    """
    import torch.distributed as dist

    reshard(model)
    params = dict(model.named_parameters())
    mine = {}
    for name, p in params.items():
        entry = mask.entry(name)
        dim, start, _ = shard_range(p)
        pos = entry.positions()
        if dim is not None:
            pos = _move(pos, entry.shape, tuple(p.shape), dim, start)
        mine[name] = pos.to(torch.int64).cpu()
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    out = {}
    for name, p in params.items():
        pos = torch.cat([g[name] for g in gathered]).sort().values
        out[name] = MaskEntry.from_positions(tuple(p.shape), pos)
    meta = {k: v for k, v in mask.meta.items() if k != "rank"}
    return Mask(out, meta)


def shard_mask(mask: Mask, model: nn.Module) -> Mask:
    """This rank's part of a whole-model ``mask`` (global shapes), for :func:`make_sparse_trainable_sharded`.

    A mask already shaped as the shards is returned as it is.

    Raises:
        UserError: The mask does not match the model's parameters.
    """
    reshard(model)
    params = dict(model.named_parameters())
    if set(params) != set(mask):
        raise UserError("mask does not match the model (different parameter names)")
    out = {}
    for name, p in params.items():
        entry = mask.entry(name)
        local = local_shape(p)
        if entry.shape == local:
            out[name] = entry
            continue
        if entry.shape != tuple(p.shape):
            raise UserError(f"mask does not match the model: {name!r} is {entry.shape} in the mask, "
                            f"{tuple(p.shape)} in the model")
        dim, start, length = shard_range(p)
        if entry.index is None:
            out[name] = (MaskEntry.all if entry.full else MaskEntry.none)(local, device=entry.device)
            continue
        pos = entry.positions()
        stride = math.prod(p.shape[dim + 1:])
        along = torch.div(pos, stride, rounding_mode="floor") % p.shape[dim]
        keep = pos[(along >= start) & (along < start + length)]
        out[name] = MaskEntry.from_positions(local, _move(keep, tuple(p.shape), local, dim, -start))
    return Mask(out, mask.meta)
