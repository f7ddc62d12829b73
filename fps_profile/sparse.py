"""Correct sparse fine-tuning: frozen entries stay bit-identical under any optimizer.

GPS masks *gradients* (zeroing frozen ones before ``optimizer.step()``), which is
not enough: weight decay still moves frozen weights, gradient clipping still sees
frozen gradients, Adam keeps dense state, and in the GPS code the masking only
happens under AMP. Here frozen entries are not parameters at all:

* a tensor with every entry trainable stays an ordinary trainable parameter;
* a tensor with none trainable gets ``requires_grad = False``;
* a partly trainable tensor is frozen as a whole, and a parametrization
  rebuilds it on every forward as ``W.index_copy(selected, values)`` where
  ``values`` (one entry per selected weight) is the only trainable parameter.
  Optimizer state, weight decay and clipping then exist only for trainable
  entries, and the frozen entries of the effective weight are copies of ``W``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from fps_profile.errors import UserError


class SparseValues(nn.Module):
    """Parametrization ``W -> W`` with the entries at ``index`` replaced by ``values``.

    Args:
        weight: The dense weight (its selected entries initialise ``values``).
        index: Flat positions of the trainable entries (sorted, distinct).
    """

    def __init__(self, weight: torch.Tensor, index: torch.Tensor) -> None:
        super().__init__()
        index = index.to(device=weight.device, dtype=torch.long)
        self.register_buffer("index", index)
        self.values = nn.Parameter(weight.detach().reshape(-1)[index].clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1).index_copy(0, self.index, self.values).view_as(weight)


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
    from fps_profile.mask import Mask

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
