"""What selection needs to know about FSDP2's sharded parameters (DTensors on a 1-D mesh).

:func:`fps_profile.select` learns that it runs sharded from the parameters
themselves: when the ranked parameters are DTensors (``fully_shard`` made them),
:func:`group_of` returns their process group and every rank scores its own
shard. Nothing here does anything to a model of plain tensors, so single-process
selection is unchanged.

A DTensor sharded with ``Shard(d)`` over ``n`` ranks holds, on rank ``r``, the
``r``-th ``torch.chunk`` of dim ``d`` (chunks of ``ceil(size / n)``; the last ones
may be short or empty): :func:`shard_range`. FSDP2 shards dim 0 unless told
otherwise (:func:`fps_profile.measure.distributed.shard.shard_model` shards GPT-2's
``Conv1D`` weights on dim 1, their output axis).

During a forward pass FSDP2 replaces each sharded parameter on its module with
an unsharded ``nn.Parameter`` (the all-gathered weight). The activation
selectors recognise their targets by identity, so every FSDP module gets a
forward pre-hook (:func:`tag_unsharded`) that marks the unsharded parameters
with the sharded one they stand for (attribute :data:`SHARDED_ATTR`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fps_profile.errors import UserError

#: Attribute of an FSDP2 unsharded parameter: the sharded parameter (DTensor) it stands for.
SHARDED_ATTR = "_fps_sharded"
_HOOKED = "_fps_tag_hook"


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return None
    return DTensor


def is_sharded(t) -> bool:
    """Whether ``t`` is a DTensor."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view, no copy); any other tensor as it is."""
    return t.to_local() if is_sharded(t) else t


def local_shape(t: torch.Tensor) -> tuple[int, ...]:
    """The shape of :func:`local` ``(t)``."""
    return tuple(local(t).shape)


def shard_dim(t: torch.Tensor) -> int | None:
    """The dim a DTensor is sharded on (None for a plain tensor).

    Raises:
        UserError: A DTensor that is not sharded on one dim of a 1-D mesh (HSDP, TP).
    """
    if not is_sharded(t):
        return None
    from torch.distributed.tensor import Shard

    placements = t.placements
    if t.device_mesh.ndim != 1 or len(placements) != 1 or not isinstance(placements[0], Shard):
        raise UserError(f"sharded selection supports FSDP2 on a 1-D mesh (Shard placements), not {placements}")
    return placements[0].dim


def shard_range(t: torch.Tensor) -> tuple[int | None, int, int]:
    """``(dim, start, length)``: where this rank's shard of ``t`` lies along its sharded dim
    (``(None, 0, 0)`` for a plain tensor)."""
    dim = shard_dim(t)
    if dim is None:
        return None, 0, 0
    n, rank, size = t.device_mesh.size(), t.device_mesh.get_local_rank(), t.shape[dim]
    chunk = math.ceil(size / n) if size else 0
    start = min(rank * chunk, size)
    length = max(0, min(chunk, size - start))
    if local(t).shape[dim] != length:  # the chunk rule is DTensor's; a different one would be a torch change
        raise RuntimeError(f"unexpected shard of {tuple(t.shape)} on dim {dim}: {tuple(local(t).shape)}")
    return dim, start, length


def local_slice(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (shaped as ``like`` globally) that this rank holds of ``like``."""
    dim, start, length = shard_range(like)
    return full if dim is None else full.narrow(dim, start, length)


def group_of(params: Iterable[torch.Tensor]):
    """The process group the parameters are sharded over, or None when none is a DTensor.

    Raises:
        UserError: Some are DTensors and some not, or they live on different meshes.
    """
    params = list(params)
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return None
    if len(sharded) != len(params):
        raise UserError("some ranked parameters are sharded (DTensor) and some not: shard the whole model "
                        "(fps_profile.measure.distributed.shard_model) before selecting")
    mesh = sharded[0].device_mesh
    for p in sharded:
        shard_dim(p)
        if p.device_mesh != mesh:
            raise UserError("the ranked parameters are sharded over different device meshes")
    return mesh.get_group()


def stands_for(weight: torch.Tensor) -> torch.Tensor:
    """The sharded parameter an FSDP2 unsharded weight stands for (``weight`` itself otherwise)."""
    sharded = getattr(weight, SHARDED_ATTR, None)
    return weight if sharded is None else sharded


def _tag(module: nn.Module, args) -> None:
    for owner, attr, sharded in module.__dict__[_HOOKED][1]:
        current = owner._parameters.get(attr)
        if current is not None and current is not sharded and getattr(current, SHARDED_ATTR, None) is not sharded:
            setattr(current, SHARDED_ATTR, sharded)


def tag_unsharded(model: nn.Module) -> None:
    """Give every FSDP module of ``model`` (once) a forward pre-hook, run after FSDP2's own,
    that marks the unsharded parameters FSDP2 put on its submodules with :data:`SHARDED_ATTR`."""
    from torch.distributed.fsdp import FSDPModule

    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    claimed: set[tuple[int, str]] = set()
    for fsdp in reversed(fsdp_modules):  # innermost first: a parameter belongs to its innermost FSDP module
        owned = []
        for sub in fsdp.modules():
            for attr, p in sub._parameters.items():
                if p is not None and is_sharded(p) and (id(sub), attr) not in claimed:
                    claimed.add((id(sub), attr))
                    owned.append((sub, attr, p))
        if _HOOKED in fsdp.__dict__:
            fsdp.__dict__[_HOOKED][1][:] = owned
            continue
        handle = fsdp.register_forward_pre_hook(_tag)
        fsdp.__dict__[_HOOKED] = (handle, owned)


def reshard(model: nn.Module) -> None:
    """Put the sharded parameters back on every FSDP module of ``model`` (freeing unsharded ones).

    FSDP2 leaves the root's parameters unsharded after a forward pass without a
    backward (the root does not reshard after forward): ``named_parameters()``
    would then list plain tensors. A no-op on a model without FSDP modules.
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
