"""Seeded splits and draws: a stratified train/val split, class subsets, batches of indices.

Everything runs on a CPU ``torch.Generator`` seeded once per call, so the same
arguments give the same indices on every machine and every run.
"""

from __future__ import annotations

import torch

from fps_profile.errors import UserError, did_you_mean


def check_fraction(val_fraction: float) -> None:
    """Fail with one line unless ``0 <= val_fraction < 1``."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise UserError(f"validation fraction must be a number in [0, 1), not {val_fraction!r}")


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a train and a validation split that keep each class's share.

    Each class in turn (ascending) is shuffled with one generator seeded with
    ``seed``; its first ``round(n * val_fraction)`` samples go to validation, but
    never all of them (a class with samples keeps at least one for training).

    Returns:
        ``(train, val)``: sorted int64 index tensors into ``labels``.
    """
    check_fraction(val_fraction)
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(round(len(idx) * val_fraction), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return _sorted_cat(train), _sorted_cat(val)


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.sort(torch.cat(parts)).values if parts else torch.empty(0, dtype=torch.long)


def parse_classes(classes, names: tuple[str, ...], what: str) -> list[int]:
    """Class indices (into ``names``) of a subset given as ``"0-4"``, ``"cat,dog"`` or a list.

    An item ``a-b`` with integers ``a <= b`` stands for the names ``a``, ..., ``b``
    (digits ``0-4``); any other item is a class name. Order follows ``names``.

    Raises:
        UserError: An unknown class, an empty or repeated subset.
    """
    items = [s.strip() for s in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    wanted: list[str] = []
    for item in items:
        lo, sep, hi = item.partition("-")
        if sep and lo.strip().isdigit() and hi.strip().isdigit() and item not in names:
            lo, hi = int(lo), int(hi)
            if lo > hi:
                raise UserError(f"{what}: class range {item!r} is empty")
            wanted += [str(i) for i in range(lo, hi + 1)]
        elif item:
            wanted.append(item)
    if not wanted:
        raise UserError(f"{what}: the class subset {classes!r} names no class")
    for name in wanted:
        if name not in names:
            raise did_you_mean(name, names, f"class of {what}", show_known=len(names) <= 20)
    if len(set(wanted)) != len(wanted):
        raise UserError(f"{what}: the class subset {classes!r} names a class twice")
    return sorted(names.index(n) for n in wanted)


def draw(indices: torch.Tensor, batch_size: int, num_batches: int, seed: int, what: str) -> list[torch.Tensor]:
    """``num_batches`` index batches of ``batch_size`` drawn without replacement from ``indices``.

    The indices are shuffled with a generator seeded with ``seed`` and cut in
    order; when they run out, a new shuffle follows (epochs), so no sample is
    drawn twice before every sample of the split has been drawn once.
    """
    if len(indices) == 0:
        raise UserError(f"{what} has no samples to draw batches from")
    gen = torch.Generator().manual_seed(seed)
    need = batch_size * num_batches
    order = []
    while sum(len(o) for o in order) < need:
        order.append(indices[torch.randperm(len(indices), generator=gen)])
    flat = torch.cat(order)[:need]
    return list(flat.split(batch_size))
