"""Budget policies: how many of the ranked entries become trainable.

* :class:`PerRowTopK` (GPS's policy, the default): in every output row of every
  ranked tensor (4-D kernels flattened to ``[out, in*kh*kw]``), the ``k``
  highest-scoring entries. It needs one tensor's scores at a time.
* :class:`GlobalFraction`: the top ``fraction`` of all ranked entries' scores,
  compared across tensors. It needs every ranked score at once (4 bytes per
  ranked entry), so its peak memory is higher.

Ties are broken by ``torch.topk`` (implementation-defined; continuous scores
practically never tie).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Iterator

import torch

from fps_profile.errors import UserError


class Budget:
    """Turns per-tensor scores into boolean masks (True = trainable)."""

    def describe(self) -> str:
        raise NotImplementedError

    def masks(self, scored: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """Consume ``(name, scores)`` pairs lazily and yield ``(name, mask)`` pairs."""
        raise NotImplementedError


class PerRowTopK(Budget):
    """The ``k`` largest scores of every output row.

    Args:
        k: Entries per row, at least 1 and at most the row length.
    """

    def __init__(self, k: int) -> None:
        try:
            if isinstance(k, bool):
                raise TypeError
            k_int = operator.index(k)
        except TypeError:
            raise UserError(f"k must be an integer >= 1, not {k!r}") from None
        if k_int < 1:
            raise UserError(f"k must be an integer >= 1, not {k!r}")
        self.k = k_int

    def describe(self) -> str:
        return f"per-row top-{self.k}"

    def row_mask(self, name: str, scores: torch.Tensor) -> torch.Tensor:
        rows = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
        if self.k > rows.shape[1]:
            raise UserError(f"k={self.k} is larger than a row of {name!r} ({rows.shape[1]} entries)")
        idx = rows.topk(self.k, dim=1, sorted=False).indices
        mask = torch.zeros(rows.shape, dtype=torch.bool, device=scores.device)
        mask.scatter_(1, idx, True)
        return mask.view(scores.shape)

    def masks(self, scored):
        for name, scores in scored:
            yield name, self.row_mask(name, scores)
            del scores


class GlobalFraction(Budget):
    """The top ``fraction`` of every ranked entry, compared across tensors.

    Args:
        fraction: In ``(0, 1]``; at least one entry is always kept.
    """

    def __init__(self, fraction: float) -> None:
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise UserError(f"fraction must be a number in (0, 1], not {fraction!r}") from None
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise UserError(f"fraction must be in (0, 1], not {fraction!r}")
        self.fraction = f

    def describe(self) -> str:
        return f"global top-{self.fraction:g}"

    def masks(self, scored):
        names, shapes, flat = [], [], []
        for name, scores in scored:
            names.append(name)
            shapes.append(scores.shape)
            flat.append(scores.detach().reshape(-1).float())
        allscores = torch.cat(flat)
        del flat
        n = max(1, round(self.fraction * allscores.numel()))
        keep = torch.zeros(allscores.numel(), dtype=torch.bool, device=allscores.device)
        keep[allscores.topk(n, sorted=False).indices] = True
        del allscores
        start = 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            yield name, keep[start:start + size].view(shape).clone()
            start += size


def make_budget(k: int | None = None, fraction: float | None = None) -> Budget:
    """The budget for exactly one of ``k`` (per-row top-K) or ``fraction`` (global)."""
    if (k is None) == (fraction is None):
        raise UserError("give exactly one of k (per-row top-K) or fraction (global top fraction)")
    return PerRowTopK(k) if k is not None else GlobalFraction(fraction)
