"""Trainable counts of a selection, known without running it.

A selection's memory depends on *how many* entries each tensor trains, never
on *which*: per-row top-K trains exactly K entries of every output row of a
ranked tensor, the scope fixes the fully trainable and frozen tensors. The
sim cannot read a fake mask's values, so it counts from the budget, and a
sparse ``train_step`` gets a synthetic mask with those counts (the first K
entries of each row). A ``shira:R`` budget keeps exactly ``R*(m+n)`` entries of
every ranked ``m x n`` tensor (the first ones in the synthetic mask). A global
``fraction`` budget is split over the ranked tensors in proportion to their sizes
(the real split depends on the scores).
"""

from __future__ import annotations

from torch import nn

from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry, rows_cols
from fps_profile.models.parts import output_axis
from fps_profile.measure.phases import BudgetSpec
from fps_profile.selection.scope import Role, assign_roles


def trainable_counts(model: nn.Module, budget: BudgetSpec, scope: str) -> dict[str, int]:
    """Trainable entries per parameter for ``budget`` in ``scope``.

    Raises:
        UserError: As :mod:`fps_profile.selection.budget` would (``k`` longer than a row, bad fraction,
            ``shira:R`` larger than a tensor).
    """
    from fps_profile.selection.budget import make_budget, proportional_split
    from fps_profile.selection.shira import shira_size

    policy = make_budget(**budget.select_kwargs())
    roles = assign_roles(model, scope)
    params = dict(model.named_parameters())
    ranked = [n for n, (role, _, _) in roles.items() if role is Role.RANKED]
    counts = {n: (params[n].numel() if role is Role.TRAINABLE else 0) for n, (role, _, _) in roles.items()}
    if budget.k is not None:
        for n in ranked:
            rows, cols = rows_cols(tuple(params[n].shape), output_axis(*roles[n][1:]))
            if policy.k > cols:
                from fps_profile.errors import UserError

                raise UserError(f"k={policy.k} is larger than a row of {n!r} ({cols} entries)")
            counts[n] = rows * policy.k
    elif budget.shira is not None:
        for n in ranked:
            counts[n] = shira_size(budget.shira, n, tuple(params[n].shape), output_axis(*roles[n][1:]))
    elif ranked:
        sizes = [params[n].numel() for n in ranked]
        counts.update(zip(ranked, proportional_split(policy.keep(sum(sizes)), sizes)))
    return {n: counts[n] for n in params}


def synthetic_mask(model: nn.Module, budget: BudgetSpec, scope: str) -> Mask:
    """A real (host) mask with :func:`trainable_counts` entries per tensor: the first
    ``k`` of every row (per-row budget) or the first entries (``shira:R``, global fraction)."""
    import torch

    counts = trainable_counts(model, budget, scope)
    owners = {n: (mod, attr) for n, (_, mod, attr) in assign_roles(model, scope).items()}
    out = {}
    for name, p in model.named_parameters():
        axis = output_axis(*owners[name])
        rows, cols = rows_cols(tuple(p.shape), axis)
        n = counts[name]
        if n in (0, p.numel()):
            out[name] = (MaskEntry.all if n else MaskEntry.none)(p.shape)
        elif budget.k is not None and axis == 1:  # an [in, out] weight: the first k inputs of every column
            out[name] = MaskEntry.from_positions(p.shape, torch.arange(n // rows * rows))
        elif budget.k is not None:
            k = n // rows
            positions = torch.arange(0, rows * cols, cols).unsqueeze(1) + torch.arange(k)
            out[name] = MaskEntry.from_positions(p.shape, positions, k=k)
        else:
            out[name] = MaskEntry.from_positions(p.shape, torch.arange(n))
    return Mask(out, {"selector": "synthetic", "budget": str(budget), "scope": scope})
