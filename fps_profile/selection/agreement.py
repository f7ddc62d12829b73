"""Whether several selectors (or mask files) choose alike: the overlap of their masks, pair by pair, and the
rank correlation of their scores where scores exist.

The Spearman coefficient of two selectors' scores is taken tensor by tensor (ties get their average
rank) and summarised as the mean over the ranked tensors weighted by their entries. A coefficient over
every ranked entry pooled would mostly measure how the tensors' score scales differ, the way a Jaccard
index over whole tensors measures the scope (:mod:`fps_profile.selection.overlap`), and no budget
ranks entries of different tensors against each other except a global fraction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask
from fps_profile.selection.overlap import MaskOverlap, overlap, partly_trained


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of the entries of ``x`` (flattened), ties sharing their average rank, as float64."""
    flat = x.detach().reshape(-1)
    if flat.is_floating_point() and not torch.isfinite(flat).all():
        raise UserError("scores with NaN or infinite entries have no ranks")
    _, inverse, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    return (ends - (counts.to(torch.float64) - 1) / 2)[inverse]


def _pearson(ra: torch.Tensor, rb: torch.Tensor) -> float | None:
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra.square().sum()) * float(rb.square().sum()))
    return float((ra * rb).sum()) / den if den else None


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman's rank correlation of the entries of ``a`` and ``b`` (same number of entries): the Pearson
    correlation of their average ranks; None where either is constant (no ranking to compare)."""
    if a.numel() != b.numel():
        raise UserError(f"scores of {a.numel()} and {b.numel()} entries cannot be compared")
    return _pearson(average_ranks(a), average_ranks(b))


@dataclass(frozen=True)
class Correlation:
    """Spearman coefficients of two selectors' scores.

    Attributes:
        tensors: Ranked tensor name -> coefficient (None: a constant score, nothing to rank).
        sizes: Ranked tensor name -> entries.
    """

    tensors: dict[str, float | None]
    sizes: dict[str, int]

    @property
    def total(self) -> float | None:
        """The coefficients' mean over the tensors that have one, weighted by their entries."""
        known = [(c, self.sizes[n]) for n, c in self.tensors.items() if c is not None]
        weight = sum(w for _, w in known)
        return sum(c * w for c, w in known) / weight if weight else None


def correlations(scores: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[tuple[str, str], Correlation]:
    """Per-tensor Spearman coefficients of every pair of selectors in ``scores`` (name -> tensor -> scores),
    over the tensors all of them scored. Each tensor's ranks are computed once per selector."""
    names = list(scores)
    tensors = [t for t in (scores[names[0]] if names else {}) if all(t in scores[n] for n in names)]
    out: dict[tuple[str, str], dict] = {pair: {} for pair in itertools.combinations(names, 2)}
    for t in tensors:
        ranks = {n: average_ranks(scores[n][t]) for n in names}
        for x, y in out:
            if ranks[x].numel() != ranks[y].numel():
                raise UserError(f"scores of {t!r} have {ranks[x].numel()} and {ranks[y].numel()} entries")
            out[x, y][t] = _pearson(ranks[x], ranks[y])
    sizes = {t: scores[names[0]][t].numel() for t in tensors}
    return {pair: Correlation(coefs, sizes) for pair, coefs in out.items()}


@dataclass(frozen=True)
class Agreement:
    """One pair: names, the overlap of their masks and, where both have scores, their correlation."""

    a: str
    b: str
    overlap: MaskOverlap
    correlation: Correlation | None = None

    def to_dict(self) -> dict:
        corr = self.correlation
        out = {"a": self.a, "b": self.b, **self.overlap.to_dict(),
               "spearman": corr.total if corr else None}
        for t in out["tensors"]:
            t["spearman"] = corr.tensors.get(t["name"]) if corr and t["ranked"] else None
        return out


def agreements(masks: Mapping[str, Mask], scores: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
               ranked: set[str] | None = None) -> list[Agreement]:
    """Every pair of ``masks`` (in order), with the correlation of ``scores`` where both members have some.

    Args:
        masks: Name -> mask; at least two, over the same parameters.
        scores: Name -> (ranked tensor -> scores), for the members that have them.
        ranked: The ranked tensors (the scope's); default those any of ``masks`` trains in part, so
            every pair counts the same tensors as ranked.

    Raises:
        UserError: Fewer than two masks, or masks of different parameters or shapes.
    """
    if len(masks) < 2:
        raise UserError(f"comparing needs at least two masks, not {len(masks)}")
    ranked = partly_trained(masks.values()) if ranked is None else ranked
    corr = correlations({n: scores[n] for n in masks if n in (scores or {})})
    return [Agreement(x, y, overlap(masks[x], masks[y], ranked), corr.get((x, y)))
            for x, y in itertools.combinations(masks, 2)]
