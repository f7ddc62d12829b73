"""The exact sparse step on an FSDP2-sharded model: frozen entries stay bit-identical.

:func:`fps_profile.make_sparse_trainable` does not compose with FSDP2: its
parametrization moves ``weight`` into ``module.parametrizations`` and serves it
through a property, while FSDP2 swaps ``module._parameters["weight"]`` between
the sharded DTensor and the all-gathered weight around every forward. So on a
sharded model the same idea is applied to the shards instead:

* a tensor trainable as a whole (on every rank) stays a trainable DTensor parameter;
* a tensor with no trainable entry (anywhere) gets ``requires_grad = False``:
  FSDP2 neither reduces nor keeps a gradient for it;
* a partly trainable tensor requires grad (so FSDP2 reduce-scatters its gradient,
  averaged over the ranks) and each rank keeps a ``values`` vector of the trainable
  entries of *its shard* (possibly empty). A post-accumulate-grad hook on the
  sharded parameter, which FSDP2 calls as soon as it has written the reduced
  shard gradient, gathers it at those positions into ``values.grad`` and drops the
  dense shard gradient. (FSDP2's shard gradients of one group are views into one
  flat buffer; the whole tensors' gradients are copied out of it, so that it is
  freed: :func:`_compact_grad`.) Before each forward, ``values`` that changed are written
  into the shard (in place, under ``no_grad``), and FSDP2 all-gathers from there.

Which tensors are whole, partial or frozen is decided on the global mask (an
all-reduce of the per-tensor counts), so ``requires_grad`` is the same on every
rank, as FSDP2's reduce-scatter needs. Optimizer state exists for ``values`` and
the whole tensors' shards only. Gradient clipping needs the norm over every
rank's trainable entries: :func:`clip_grad_norm_sharded`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from fps_profile.selection.sharding.masks import shard_mask
from fps_profile.selection.sharding.tensors import group_of, is_sharded, local, reshard
from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask


class SparseShards:
    """What :func:`make_sparse_trainable_sharded` set up on one rank.

    Attributes:
        whole: Parameters trainable as a whole (DTensors; their local shards are trained).
        values: Parameter name -> this rank's trainable entries of a partly trainable tensor.
        index: Parameter name -> their flat positions in the local shard (int64).
        param_groups: ``[{"params": whole}, {"params": values}]`` for a ``torch.optim``
            optimizer (two groups: the foreach kernels take DTensors or plain tensors, not both).
    """

    def __init__(self, model: nn.Module, whole: list[nn.Parameter], partial: dict[str, tuple[nn.Parameter,
                                                                                             torch.Tensor]],
                 group) -> None:
        self.model, self.group = model, group
        self.whole = whole
        self.values = {n: v for n, (v, _) in partial.items()}
        self.index = {n: i for n, (_, i) in partial.items()}
        self._params = {n: p for n, p in model.named_parameters() if n in partial}
        self._synced = {n: None for n in partial}
        self._handles = [model.register_forward_pre_hook(lambda *_: self.sync(), prepend=True)]
        for name, p in self._params.items():
            self._handles.append(p.register_post_accumulate_grad_hook(self._grad_hook(name)))
        for p in whole:
            self._handles.append(p.register_post_accumulate_grad_hook(_compact_grad))

    @property
    def param_groups(self) -> list[dict]:
        return [{"params": list(self.whole)}, {"params": list(self.values.values())}]

    def parameters(self) -> list[torch.Tensor]:
        """Every tensor the optimizer updates."""
        return list(self.whole) + list(self.values.values())

    @property
    def trainable(self) -> int:
        """This rank's trainable scalars."""
        return sum(local(p).numel() for p in self.whole) + sum(v.numel() for v in self.values.values())

    def _grad_hook(self, name: str):
        # The hook reads the index dict (which the sim may refill), never ``self``: a tensor's hooks are held
        # from C++, where the garbage collector cannot see a cycle back to the model.
        values, indices = self.values[name], self.index

        def hook(param: torch.Tensor) -> None:
            g = local(param.grad).reshape(-1).index_select(0, indices[name])
            values.grad = g if values.grad is None else values.grad.add_(g)
            param.grad = None  # the dense shard gradient is not kept

        return hook

    @torch.no_grad()
    def sync(self) -> None:
        """Write ``values`` that changed into their shards (runs before every forward)."""
        for name, values in self.values.items():
            shard = local(self._params[name])
            if self._synced[name] == (values._version, shard._version):
                continue
            if shard.is_contiguous():
                shard.view(-1).index_copy_(0, self.index[name], values)
            else:
                shard.copy_(shard.reshape(-1).index_copy(0, self.index[name], values).view_as(shard))
            self._synced[name] = (values._version, shard._version)

    def remove(self) -> None:
        """Write ``values`` into the shards one last time and remove the hooks."""
        self.sync()
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _compact_grad(param: torch.Tensor) -> None:
    """Give a whole-trainable shard a gradient of its own.

    FSDP2 makes every sharded gradient of a group a view into one flat reduce-scatter
    output; a bias's gradient would keep the whole group's buffer alive (as large as
    the group's sharded gradients) although the partly trainable tensors' gradients
    were dropped. A copy of the bias's gradient frees it.
    """
    g = local(param.grad)
    if g.untyped_storage().nbytes() > g.numel() * g.element_size():
        from torch.distributed.tensor import DTensor

        grad = param.grad
        param.grad = DTensor.from_local(g.clone(), grad.device_mesh, grad.placements, run_check=False,
                                        shape=grad.shape, stride=grad.stride())


def make_sparse_trainable_sharded(model: nn.Module, mask: Mapping[str, torch.Tensor],
                                  counts: Mapping[str, int] | None = None) -> SparseShards:
    """Make exactly the mask's True entries of an FSDP2-sharded model trainable, on every rank.

    Args:
        model: A model sharded with ``fully_shard`` (:func:`fps_profile.measure.distributed.shard_model`).
        mask: The whole model's mask (global shapes), or this rank's (shard shapes, as
            sharded :func:`fps_profile.select` returns it).
        counts: Each tensor's trainable entries over every rank, where the caller knows them
            (the sim: its fake process group sums nothing); default: all-reduced.

    Returns:
        A :class:`SparseShards`; give ``.param_groups`` to the optimizer.

    Raises:
        UserError: The model is not sharded, or the mask does not match it.
    """
    import torch.distributed as dist

    reshard(model)
    params = dict(model.named_parameters())
    group = group_of(params.values())
    if group is None or not all(is_sharded(p) for p in params.values()):
        raise UserError("make_sparse_trainable_sharded needs a model sharded with FSDP2 (fully_shard on it); "
                        "use fps_profile.make_sparse_trainable otherwise")
    mask = shard_mask(mask if isinstance(mask, Mask) else Mask(mask), model)
    if counts is None:
        summed = torch.tensor([mask.count(n) for n in params], dtype=torch.int64)
        dist.all_reduce(summed, group=group)
        totals = summed.tolist()
    else:
        totals = [int(counts[n]) for n in params]
    whole, partial = [], {}
    for (name, p), total in zip(params.items(), totals):
        entry = mask.entry(name)
        if total == math.prod(p.shape):
            whole.append(p.requires_grad_(True))
        elif total == 0:
            p.requires_grad_(False)
        else:
            p.requires_grad_(True)
            index = entry.positions().to(torch.int64) if entry.count else torch.zeros(0, dtype=torch.int64)
            shard = local(p.detach())
            values = nn.Parameter(shard.reshape(-1).index_select(0, index))
            partial[name] = (values, index)
    return SparseShards(model, whole, partial, group)


@torch.no_grad()
def clip_grad_norm_sharded(params: list[torch.Tensor], max_norm: float, group) -> torch.Tensor:
    """Scale the gradients of every rank's ``params`` so that their global 2-norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_`` does in one process (coefficient
    ``max_norm / (norm + 1e-6)``, clamped to 1), with the norm taken over the local
    gradients of every rank (an all-reduce of the sum of squares, in float64).

    Returns:
        The global norm before clipping.
    """
    import torch.distributed as dist

    grads = [local(p.grad) for p in params if p.grad is not None]
    sq = torch.zeros(1, dtype=torch.float64, device=grads[0].device if grads else None)
    for g in grads:
        sq += g.double().square().sum()
    dist.all_reduce(sq, group=group)
    norm = sq.sqrt().float()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return norm


class ShardedTrainStep:
    """One fine-tuning step on a sharded model, as :func:`fps_profile.measure.phases.train_step_fn` makes
    it in one process: forward on this rank's batch, task loss, backward (FSDP2 averages the
    gradients), clipping to a global norm of ``clip``, AdamW; sparse when given a mask.

    Args:
        model: The sharded model.
        inputs, labels: This rank's slice of the global batch.
        mask: The whole model's mask or this rank's (None: full fine-tuning).
        counts: Global trainable counts per tensor (see :func:`make_sparse_trainable_sharded`).
        lr, weight_decay, clip: As the single-process step's defaults.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None,
                 mask: Mapping[str, torch.Tensor] | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 clip: float = 1.0, counts: Mapping[str, int] | None = None) -> None:
        model.train()
        if mask is not None:
            self.sparse: SparseShards | None = make_sparse_trainable_sharded(model, mask, counts)
            groups, self.params = self.sparse.param_groups, self.sparse.parameters()
            self.group = self.sparse.group
        else:
            reshard(model)
            self.sparse, self.params = None, [p.requires_grad_(True) for p in model.parameters()]
            groups, self.group = self.params, group_of(self.params)
        self.model, self.inputs, self.labels, self.clip = model, inputs, labels, clip
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

    @property
    def trainable(self) -> int:
        """This rank's trainable scalars."""
        if self.sparse is not None:
            return self.sparse.trainable
        return sum(local(p).numel() for p in self.params)

    def backward(self) -> torch.Tensor:
        """Forward, loss and backward (gradients reduced over the ranks); returns the loss."""
        from fps_profile.models.task import task_loss

        loss = task_loss(self.model, self.inputs, self.labels)
        loss.backward()
        return loss.detach()

    def update(self) -> None:
        """Clip to the global norm, AdamW step, gradients cleared."""
        clip_grad_norm_sharded(self.params, self.clip, self.group)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> torch.Tensor:
        loss = self.backward()
        self.update()
        return loss
