"""Trainable counts of a selection, known without running it.

A selection's memory depends on *how many* entries each tensor trains, never
on *which*: per-row top-K trains exactly K entries of every output row of a
ranked tensor, the scope fixes the fully trainable and frozen tensors. The
sim cannot read a fake mask's values, so it counts from the budget, and a
sparse ``train_step`` gets a synthetic mask with those counts (the first K
entries of each row). A global ``fraction`` budget is split over the ranked
tensors in proportion to their sizes (the real split depends on the scores).
"""

from __future__ import annotations

from torch import nn

from fps_profile.mask import Mask
from fps_profile.phases import BudgetSpec
from fps_profile.scope import Role, assign_roles


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) <= 1:
        n = shape[0] if shape else 1
        return 1, n
    cols = 1
    for s in shape[1:]:
        cols *= s
    return shape[0], cols


def trainable_counts(model: nn.Module, budget: BudgetSpec, scope: str) -> dict[str, int]:
    """Trainable entries per parameter for ``budget`` in ``scope``.

    Raises:
        UserError: As :mod:`fps_profile.budget` would (``k`` longer than a row, bad fraction).
    """
    from fps_profile.budget import make_budget

    policy = make_budget(budget.k, budget.fraction)
    roles = assign_roles(model, scope)
    params = dict(model.named_parameters())
    ranked = [n for n, (role, _, _) in roles.items() if role is Role.RANKED]
    counts = {n: (params[n].numel() if role is Role.TRAINABLE else 0) for n, (role, _, _) in roles.items()}
    if budget.k is not None:
        for n in ranked:
            rows, cols = _rows(tuple(params[n].shape))
            if policy.k > cols:
                from fps_profile.errors import UserError

                raise UserError(f"k={policy.k} is larger than a row of {n!r} ({cols} entries)")
            counts[n] = rows * policy.k
    elif ranked:
        total = sum(params[n].numel() for n in ranked)
        want = max(1, round(policy.fraction * total))
        for n in ranked:
            counts[n] = round(want * params[n].numel() / total)
    return {n: counts[n] for n in params}


def synthetic_mask(model: nn.Module, budget: BudgetSpec, scope: str) -> Mask:
    """A real (host) mask with :func:`trainable_counts` entries per tensor, stored compactly.

    Each tensor is an expanded view of one row, so the mask of a ViT-H takes
    kilobytes, not the 632 MB a dense bool mask would.
    """
    import torch

    counts = trainable_counts(model, budget, scope)
    out = {}
    for name, p in model.named_parameters():
        rows, cols = _rows(tuple(p.shape))
        n = counts[name]
        if n in (0, p.numel()):
            out[name] = torch.full((1,), bool(n), dtype=torch.bool).expand(p.shape)
        elif budget.k is not None:
            row = torch.zeros(cols, dtype=torch.bool)
            row[: n // rows] = True
            out[name] = row.expand(rows, cols).view(p.shape) if p.dim() > 1 else row
        else:
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[:n] = True
            out[name] = flat.view(p.shape)
    return Mask(out, {"selector": "synthetic", "budget": str(budget), "scope": scope})
