"""How much two masks agree: the Jaccard index of the ranked entries, per tensor and in total, beside the
tensors trained (or frozen) whole.

A scope trains some tensors whole (biases, the classifier, layer scales) and ranks the others entry
by entry. Every selector trains the same whole tensors, and on a ViT they outnumber the ranked
entries a per-row budget keeps (ViT-Ti at ``k=1``: ~0.2 M whole entries against ~10 k ranked), so a
Jaccard index over every trainable entry reads ~0.84 for any two selectors while their ranked
entries share ~0.3%. :class:`MaskOverlap` therefore reports the two parts apart; its ``ranked``
figure is the one that says whether two selectors chose alike.

Which tensors are ranked is the scope's decision (:func:`fps_profile.selection.scope.assign_roles`
gives it for a model); without it, a tensor counts as ranked where any of the compared masks trains
it in part (:func:`partly_trained`), which misses only a ranked tensor every mask trains whole or
not at all, where they all agree anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import torch

from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry


def jaccard(both: int, union: int) -> float:
    """``both / union``; two empty sets agree (1.0)."""
    return both / union if union else 1.0


class _Counts:
    """``union`` and ``jaccard`` of counts ``a``, ``b`` and ``both``."""

    a: int
    b: int
    both: int

    @property
    def union(self) -> int:
        return self.a + self.b - self.both

    @property
    def jaccard(self) -> float:
        return jaccard(self.both, self.union)


@dataclass(frozen=True)
class TensorOverlap(_Counts):
    """Trainable entries of one tensor in masks A and B.

    Attributes:
        name: Parameter name.
        shape: Its shape.
        ranked: Ranked entry by entry (else trained whole or frozen).
        a: Entries trainable in A.
        b: Entries trainable in B.
        both: Entries trainable in both.
    """

    name: str
    shape: tuple[int, ...]
    ranked: bool
    a: int
    b: int
    both: int

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "ranked": self.ranked, "a": self.a, "b": self.b,
                "both": self.both, "jaccard": self.jaccard}


@dataclass(frozen=True)
class Part(_Counts):
    """Counts of a group of tensors, pooled: ``tensors`` of them, entries trainable in A, B and both."""

    tensors: int
    a: int
    b: int
    both: int

    def to_dict(self) -> dict:
        return {"tensors": self.tensors, "a": self.a, "b": self.b, "both": self.both, "jaccard": self.jaccard}


def _pool(tensors: Iterable[TensorOverlap]) -> Part:
    ts = list(tensors)
    return Part(len(ts), sum(t.a for t in ts), sum(t.b for t in ts), sum(t.both for t in ts))


@dataclass(frozen=True)
class MaskOverlap:
    """The agreement of two masks (:meth:`fps_profile.Mask.overlap`).

    Attributes:
        tensors: Every tensor's counts, in mask order.
    """

    tensors: tuple[TensorOverlap, ...]

    @property
    def ranked_part(self) -> Part:
        """The ranked tensors' entries, pooled."""
        return _pool(t for t in self.tensors if t.ranked)

    @property
    def whole_part(self) -> Part:
        """The entries of the tensors trained whole (or frozen), pooled: the same in every mask of a scope."""
        return _pool(t for t in self.tensors if not t.ranked)

    @property
    def ranked(self) -> float:
        """Jaccard index of the ranked entries: whether the two chose alike."""
        return self.ranked_part.jaccard

    @property
    def whole(self) -> float:
        """Jaccard index of the entries of the tensors trained whole."""
        return self.whole_part.jaccard

    @property
    def all(self) -> float:
        """Jaccard index of every trainable entry (dominated by the whole tensors where they are many)."""
        return _pool(self.tensors).jaccard

    def to_dict(self) -> dict:
        return {"ranked": self.ranked_part.to_dict(), "whole": self.whole_part.to_dict(), "all": self.all,
                "tensors": [t.to_dict() for t in self.tensors]}

    def format(self, per_tensor: bool = False) -> str:
        """Plain text: optionally a line per ranked tensor, then the ranked and the whole parts."""
        lines = []
        if per_tensor:
            ranked = [t for t in self.tensors if t.ranked]
            width = max((len(t.name) for t in ranked), default=6)
            lines.append(f"{'tensor':<{width}}  {'A':>10}  {'B':>10}  {'both':>10}  {'Jaccard':>7}")
            lines += [f"{t.name:<{width}}  {t.a:>10,}  {t.b:>10,}  {t.both:>10,}  {t.jaccard:>7.4f}" for t in ranked]
        r, w = self.ranked_part, self.whole_part
        lines.append(f"ranked entries ({r.tensors} tensors): Jaccard {r.jaccard:.4f} ({r.both:,} shared of "
                     f"{r.union:,} in either; {r.a:,} and {r.b:,} trainable)")
        lines.append(f"whole tensors ({w.tensors} tensors, trained whole or frozen): Jaccard {w.jaccard:.4f} "
                     f"({w.both:,} shared of {w.union:,} in either)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _entry(other: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> MaskEntry:
    if callable(getattr(other, "entry", None)):  # a Mask: its compact entries, no dense copy
        b = other.entry(name)
    else:
        t = other[name]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
            raise UserError(f"mask entry {name!r} is not a bool tensor")
        b = MaskEntry.from_bool(t) if tuple(t.shape) == shape else MaskEntry.none(t.shape)
    if b.shape != shape:
        raise UserError(f"masks disagree on the shape of {name!r}: {shape} vs {b.shape}")
    return b


def partly_trained(masks: Iterable) -> set[str]:
    """Names of the tensors some mask of ``masks`` trains in part (neither whole nor frozen)."""
    return {n for m in masks for n in m if m.entry(n).index is not None}


def overlap(a, b: Mapping[str, torch.Tensor], ranked: Collection[str] | None = None) -> MaskOverlap:
    """The agreement of masks ``a`` and ``b`` (a :class:`Mask` or any mapping of bool tensors).

    Args:
        ranked: Names of the tensors the scope ranks; default those ``a`` or ``b`` trains in part.

    Raises:
        UserError: The masks cover different parameters or disagree on a shape.
    """
    if set(a) != set(b):
        raise UserError("masks cover different parameters; cannot compare them")
    entries = {n: (a.entry(n), _entry(b, n, a.entry(n).shape)) for n in a}
    if ranked is None:
        ranked = {n for n, (x, y) in entries.items() if x.index is not None or y.index is not None}
    return MaskOverlap(tuple(TensorOverlap(n, x.shape, n in ranked, x.count, y.count, x.intersection(y))
                             for n, (x, y) in entries.items()))
