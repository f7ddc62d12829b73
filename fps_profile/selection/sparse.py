"""Correct sparse fine-tuning: frozen entries stay bit-identical under any optimizer.

GPS masks *gradients* (zeroing frozen ones before ``optimizer.step()``), which is
not enough: weight decay still moves frozen weights, gradient clipping still sees
frozen gradients, Adam keeps dense state, and in the GPS code the masking only
happens under AMP. Here frozen entries are not parameters at all:

* a tensor with every entry trainable stays an ordinary trainable parameter;
* a tensor with none trainable gets ``requires_grad = False``;
* a partly trainable tensor is frozen as a whole and stays where it is; its
  selected entries live in a trainable ``values`` vector (the only parameter
  the optimizer sees). A parametrization (:class:`SparseValues`) writes
  ``values`` into the weight *in place* whenever they changed, and hands the
  weight itself (no copy) to the layer through an autograd function whose
  backward returns the layer's weight gradient gathered at the selected
  positions; the dense gradient is a temporary of one layer, freed at once.
  So a sparse step needs what the grad-dropping floor needs (the
  ``train_floor`` phase: every weight requires grad, each gradient dropped
  as it is made) plus ``values``, their gradients and optimizer state, and
  the int32 positions: 20 bytes per trainable entry with AdamW.

Optimizer state, weight decay and clipping exist only for trainable entries;
frozen entries are never written. The same path serves every tensor type (a
Linear or Conv2d weight, a LayerScale, an embedding), since it only needs the
gradient of the tensor the module uses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from fps_profile.errors import UserError


class _Gather(torch.autograd.Function):
    """Forward: ``weight`` itself. Backward: the gradient of ``values``, i.e. the
    weight's gradient at ``index``; the weight (frozen) gets none."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        return weight  # returned as is: autograd makes it a view (same storage, no copy)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return None, grad.reshape(-1).index_select(0, index), None


class SparseValues(nn.Module):
    """Parametrization ``W -> W`` whose entries at ``index`` are ``values``, written in place.

    Args:
        weight: The dense weight (its selected entries initialise ``values``).
        index: Flat positions of the trainable entries (sorted, distinct), stored as int32
            where the weight has fewer than 2**31 entries.
    """

    breakdown_buffers = "mask"  # the index buffer is the mask's, in a peak breakdown

    def __init__(self, weight: torch.Tensor, index: torch.Tensor) -> None:
        super().__init__()
        from fps_profile.selection.mask_entry import index_dtype

        index = index.to(device=weight.device, dtype=index_dtype(weight.numel()))
        self.register_buffer("index", index)
        self.values = nn.Parameter(weight.detach().reshape(-1).index_select(0, index))
        self._synced = None  # (values, weight) version counters after the last write

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # Write only when values (an optimizer step) or the weight changed since the last
        # write: the first write of a forward pass bumps the weight's version, so a second
        # one would invalidate the weight that earlier layers saved for their backward.
        if self._synced != (self.values._version, weight._version):
            with torch.no_grad():
                if weight.is_contiguous():
                    weight.view(-1).index_put_((self.index,), self.values)
                else:  # a non-contiguous layout: one temporary copy
                    weight.copy_(weight.flatten().index_put_((self.index,), self.values).view_as(weight))
            self._synced = (self.values._version, weight._version)
        return _Gather.apply(weight, self.values, self.index)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def make_sparse_trainable(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> list[nn.Parameter]:
    """Make exactly the mask's True entries trainable; return what to optimise.

    Args:
        model: The model, changed in place (partly trainable weights get a
            :class:`SparseValues` parametrization).
        mask: Parameter name -> bool tensor, True = trainable, covering every
            parameter of ``model``.

    Returns:
        The parameters to hand to any ``torch.optim`` optimizer: whole trainable
        tensors and one ``values`` vector per partly trainable tensor.

    Raises:
        UserError: If the mask does not match the model, or the model is sparse already.
    """
    from fps_profile.selection.mask import Mask

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise UserError("model already has parametrizations; call merge_sparse(model) first")
    mask = mask if isinstance(mask, Mask) else Mask(mask)
    mask.check(model)
    trainable: list[nn.Parameter] = []
    for name, p in list(model.named_parameters()):
        entry = mask.entry(name)
        if entry.index is None and entry.full:
            p.requires_grad_(True)
            trainable.append(p)
        elif entry.index is None:
            p.requires_grad_(False)
        else:
            module, attr = _owner(model, name)
            if not hasattr(module, "_fps_param_order"):
                module._fps_param_order = list(module._parameters)
            p.requires_grad_(False)
            sparse = SparseValues(p, entry.index)
            parametrize.register_parametrization(module, attr, sparse)
            trainable.append(sparse.values)
    return trainable


def merge_sparse(model: nn.Module) -> nn.Module:
    """Bake trained ``values`` back into dense weights and remove the parametrizations.

    Every parameter ends with ``requires_grad = True``; the state dict has the
    model's original keys again.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            order = [n for n in module._parameters] + list(module.parametrizations.keys())
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            # Removal re-registers the weight after the bias; restore the original order
            # so positional consumers (e.g. a saved optimizer state) still line up.
            original = getattr(module, "_fps_param_order", order)
            module._parameters = {n: module._parameters[n] for n in original if n in module._parameters} | {
                n: p for n, p in module._parameters.items() if n not in original}
            if hasattr(module, "_fps_param_order"):
                del module._fps_param_order
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_count(params: list[nn.Parameter]) -> int:
    """Number of trainable scalars in a list returned by :func:`make_sparse_trainable`."""
    return sum(p.numel() for p in params)
