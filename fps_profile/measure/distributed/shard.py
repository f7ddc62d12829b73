"""FSDP2 on a model, block by block, and each rank's slice of the global batch.

:func:`shard_model` calls ``fully_shard`` on every block, innermost first, then on
the root. Blocks are found from the model, not from a list of families:

* a Hugging Face model's ``_no_split_modules`` classes (its decoder layers);
* every child of an ``nn.Sequential``/``nn.ModuleList`` whose children (two or
  more, with parameters) all have one class: timm's ``blocks`` (ViT), ResNet's
  ``layerN`` bottlenecks, ConvNeXt's stages and the blocks inside them, a decoder's
  ``layers``/``h``.

Data parallel: every rank runs the model on its own slice of the global batch
(:func:`local_batch`), FSDP2 averages the gradients over the ranks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.models.parts import is_conv1d


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one (each its own all-gather), in model order.

    A block nested in another block is listed too (``fully_shard`` takes nested
    groups; each parameter belongs to its innermost one).
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    found: dict[int, nn.Module] = {}
    for m in model.modules():
        if m is not model and type(m).__name__ in names and _has_params(m):
            found[id(m)] = m
        if isinstance(m, (nn.Sequential, nn.ModuleList)):
            kids = [c for c in m.children() if _has_params(c)]
            if len(kids) >= 2 and len({type(c) for c in kids}) == 1:
                for c in kids:
                    found[id(c)] = c
    return [m for m in model.modules() if id(m) in found]


def _placement(world_size: int, conv1d_weights: set[int]):
    from torch.distributed.tensor import Shard

    def place(p: nn.Parameter):
        # GPT-2's Conv1D stores [in, out]: sharding its output axis keeps whole output
        # neurons on a rank (per-row top-k stays local). FSDP2 needs that dim to divide evenly.
        if id(p) in conv1d_weights and p.dim() == 2 and p.shape[1] % world_size == 0:
            return Shard(1)
        return None

    return place


def shard_model(model: nn.Module, *, offload: bool = False, by_output: bool = True, mesh=None) -> nn.Module:
    """Apply FSDP2 to ``model`` in place: every block (:func:`find_blocks`), then the root.

    Needs an initialised default process group (``fps_profile.measure.distributed.run_ranks``
    sets one up). timm's ``forward_features``/``forward_head`` are registered as FSDP
    forward methods, so GPS's SupCon loss (which calls them) unshards the root too.

    Args:
        model: The model, on the CPU; every rank must build the same one.
        offload: ``CPUOffloadPolicy`` (sharded parameters, gradients and optimizer state
            live on the CPU; on a CPU-only run they are there anyway). Pinned memory needs
            CUDA, so it is not pinned when CUDA is unavailable.
        by_output: Shard GPT-2 ``Conv1D`` weights on dim 1, their output axis, where
            it divides evenly (otherwise dim 0, as every other parameter).
        mesh: A 1-D ``DeviceMesh``; default: every rank of the default group, on the CPU.

    Returns:
        ``model`` (now an ``FSDPModule``).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

    from fps_profile.selection.sharding.tensors import tag_unsharded

    if not dist.is_initialized():
        raise UserError("shard_model needs a process group: run it inside fps_profile.measure.distributed.run_ranks")
    if mesh is None:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    conv1d = {id(m.weight) for m in model.modules() if is_conv1d(m)} if by_output else set()
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    kwargs = dict(mesh=mesh, offload_policy=policy, shard_placement_fn=_placement(mesh.size(), conv1d))
    for block in reversed(find_blocks(model)):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for method in ("forward_features", "forward_head"):
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    tag_unsharded(model)
    return model


def local_batch(batch, rank: int, world_size: int):
    """Rank ``rank``'s slice of one global batch: a tensor or an ``(inputs, labels)`` tuple,
    split along dim 0 into ``world_size`` equal parts.

    Equal parts keep data parallelism exact: FSDP2 averages the ranks' gradients of
    their mean losses, which is the global batch's mean loss only if every rank
    has as many samples.

    Raises:
        UserError: The batch size is not a multiple of ``world_size``.
    """
    items = batch if isinstance(batch, (tuple, list)) else (batch,)
    n = items[0].shape[0]
    if n % world_size:
        raise UserError(f"batch size {n} is not a multiple of the world size {world_size}: every rank needs "
                        "as many samples for the averaged gradient to be the batch's")
    size = n // world_size
    out = tuple(t[rank * size:(rank + 1) * size] if isinstance(t, torch.Tensor) else t for t in items)
    return out if isinstance(batch, (tuple, list)) else out[0]


def local_batches(batches: Iterable, rank: int, world_size: int) -> list:
    """:func:`local_batch` of every batch."""
    return [local_batch(b, rank, world_size) for b in batches]
