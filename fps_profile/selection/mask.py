"""Masks: parameter name -> bool tensor, True = trainable, stored compactly.

(GPS's code uses the opposite polarity, 1 = frozen; fps-profile never does.)

A :class:`Mask` keeps, per tensor, a :class:`MaskEntry`: all trainable, none,
or the sorted flat positions of the trainable entries (int32; int64 for a
tensor of 2**31 entries or more), so a mask that trains 0.2% of a model costs
about 4 bytes per trainable entry instead of a bool per parameter. ``mask[name]``
still returns the bool tensor, built on demand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError


def rows_cols(shape: tuple[int, ...], out_axis: int = 0) -> tuple[int, int]:
    """``shape`` as ``[rows, cols]`` the way per-row budgets see it (4-D kernels as ``[out, in*kh*kw]``).

    Rows are output neurons: ``out_axis=1`` reads a 2-D ``[in, out]`` weight (GPT-2's
    ``Conv1D``) as ``out`` rows of ``in`` entries.
    """
    if len(shape) <= 1:
        return 1, (shape[0] if shape else 1)
    if out_axis == 1 and len(shape) == 2:
        return shape[1], shape[0]
    return shape[0], math.prod(shape[1:])


def index_dtype(numel: int) -> torch.dtype:
    """int32 positions where they fit, int64 for tensors of 2**31 entries or more."""
    return torch.int32 if numel < 2**31 else torch.int64


@dataclass(frozen=True, eq=False)
class MaskEntry:
    """The trainable entries of one tensor.

    Build entries with :meth:`all`, :meth:`none`, :meth:`from_positions` or :meth:`from_bool`.

    Attributes:
        shape: The parameter's shape.
        index: Sorted, distinct flat positions of the trainable entries, or None
            where the tensor is trainable as a whole (``full``) or frozen.
        full: With ``index`` None: True if every entry is trainable, False if none is.
        k: Set where a per-row top-K budget made the entry: row ``r`` (``shape[0]``
            rows, the rest flattened) has its ``k`` positions at ``index[r*k:(r+1)*k]``.
        device: Where :meth:`dense` builds the bool tensor (``index``'s device if any).
    """

    shape: tuple[int, ...]
    index: torch.Tensor | None = None
    full: bool = False
    k: int | None = None
    device: torch.device = torch.device("cpu")

    @classmethod
    def all(cls, shape, device: str | torch.device = "cpu") -> MaskEntry:
        return cls(tuple(shape), None, True, None, torch.device(device))

    @classmethod
    def none(cls, shape, device: str | torch.device = "cpu") -> MaskEntry:
        return cls(tuple(shape), None, False, None, torch.device(device))

    @classmethod
    def from_positions(cls, shape, positions: torch.Tensor, k: int | None = None) -> MaskEntry:
        """An entry from sorted distinct flat ``positions`` (stored as :func:`index_dtype`)."""
        shape = tuple(shape)
        numel = math.prod(shape)
        if positions.numel() in (0, numel):
            return cls(shape, None, positions.numel() == numel, None, positions.device)
        index = positions.reshape(-1).to(index_dtype(numel))
        return cls(shape, index, False, k, index.device)

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> MaskEntry:
        """The entry of a dense bool mask."""
        n = int(mask.sum())
        if n in (0, mask.numel()):
            return cls(tuple(mask.shape), None, n == mask.numel(), None, mask.device)
        return cls.from_positions(mask.shape, mask.reshape(-1).nonzero().squeeze(1))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def count(self) -> int:
        """Trainable entries."""
        if self.index is None:
            return self.numel if self.full else 0
        return self.index.numel()

    @property
    def nbytes(self) -> int:
        return 0 if self.index is None else self.index.numel() * self.index.element_size()

    def dense(self) -> torch.Tensor:
        """The bool tensor of ``shape``, True = trainable (a new tensor on every call)."""
        if self.index is None:
            return torch.full(self.shape, self.full, dtype=torch.bool, device=self.device)
        out = torch.zeros(self.numel, dtype=torch.bool, device=self.device)
        out[self.index] = True
        return out.view(self.shape)

    def positions(self) -> torch.Tensor:
        """Flat positions of the trainable entries as int64 (``arange`` for a whole tensor)."""
        if self.index is None:
            return torch.arange(self.count, device=self.device)
        return self.index.long()

    def to(self, device: str | torch.device) -> MaskEntry:
        index = None if self.index is None else self.index.to(device)
        return MaskEntry(self.shape, index, self.full, self.k, torch.device(device))

    def intersection(self, other: MaskEntry) -> int:
        """Entries trainable in both (same shape assumed)."""
        if self.index is None or other.index is None:
            if not (self.full if self.index is None else other.full):
                return 0
            return other.count if self.index is None else self.count
        b = other.index.to(device=self.index.device, dtype=self.index.dtype)
        return int(torch.isin(self.index, b, assume_unique=True).sum())


@dataclass(frozen=True)
class TensorStats:
    """Trainable entries of one tensor."""

    name: str
    shape: tuple[int, ...]
    numel: int
    trainable: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class MaskStats:
    """Trainable entries per tensor and in total.

    Attributes:
        total: Entries in every masked tensor (count).
        trainable: Trainable entries (count).
        tensors: Per-tensor figures, in model order.
    """

    total: int
    trainable: int
    tensors: tuple[TensorStats, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {"total": self.total, "trainable": self.trainable, "percent": self.percent,
                "tensors": [asdict(t) | {"percent": t.percent} for t in self.tensors]}

    def format(self, per_tensor: bool = True) -> str:
        """A plain-text table (per tensor, then the total)."""
        lines = []
        if per_tensor:
            width = max((len(t.name) for t in self.tensors), default=4)
            lines.append(f"{'tensor':<{width}}  {'shape':>18}  {'trainable':>12}  {'%':>7}")
            for t in self.tensors:
                shape = "x".join(map(str, t.shape))
                lines.append(f"{t.name:<{width}}  {shape:>18}  {t.trainable:>12,}  {t.percent:>7.3f}")
        lines.append(f"trainable {self.trainable:,} of {self.total:,} parameters ({self.percent:.3f}%)")
        return "\n".join(lines)


class Mask(Mapping[str, torch.Tensor]):
    """Parameter name -> bool tensor of that parameter's shape; True = trainable.

    Stored compactly (one :class:`MaskEntry` per tensor); ``mask[name]`` builds the
    bool tensor on demand, so iterating ``mask.items()`` holds one at a time.

    Args:
        tensors: The per-parameter masks: bool tensors or :class:`MaskEntry` objects.
        meta: Free-form string metadata (selector, budget, scope, model), saved with it.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor | MaskEntry],
                 meta: Mapping[str, str] | None = None) -> None:
        entries = {}
        for name, t in tensors.items():
            if isinstance(t, MaskEntry):
                entries[name] = t
            elif isinstance(t, torch.Tensor) and t.dtype == torch.bool:
                entries[name] = MaskEntry.from_bool(t)
            else:
                raise UserError(f"mask entry {name!r} is not a bool tensor")
        self._entries: dict[str, MaskEntry] = entries
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._entries[name].dense()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats()
        return f"Mask({len(self)} tensors, {s.trainable:,}/{s.total:,} trainable)"

    def entry(self, name: str) -> MaskEntry:
        """The compact form of one tensor's mask."""
        return self._entries[name]

    def count(self, name: str) -> int:
        """Trainable entries of one tensor."""
        return self._entries[name].count

    @property
    def nbytes(self) -> int:
        """Bytes the mask's stored positions occupy (whole and frozen tensors take none)."""
        return sum(e.nbytes for e in self._entries.values())

    def stats(self) -> MaskStats:
        """Trainable counts per tensor and in total."""
        tensors = tuple(TensorStats(n, e.shape, e.numel, e.count) for n, e in self._entries.items())
        return MaskStats(sum(t.numel for t in tensors), sum(t.trainable for t in tensors), tensors)

    def overlap(self, other: Mapping[str, torch.Tensor], ranked=None):
        """How far this mask and ``other`` agree: a :class:`~fps_profile.selection.overlap.MaskOverlap`.

        Its ``ranked`` figure is the Jaccard index |A & B| / |A | B| of the ranked entries, its
        ``whole`` figure that of the tensors trained whole (biases, the classifier: the same in
        every mask of a scope, and on a ViT far more entries than a per-row budget ranks, so an
        index over both says little); ``tensors`` has every tensor's counts. Printing it gives both.

        Args:
            other: A :class:`Mask`, or any mapping of parameter names to bool tensors.
            ranked: Names of the tensors the scope ranks (default: those either mask trains in part).
        """
        from fps_profile.selection.overlap import overlap

        return overlap(self, other, ranked)

    def check(self, model: nn.Module) -> None:
        """Fail with a one-line error unless names and shapes match ``model``'s parameters."""
        params = dict(model.named_parameters())
        missing = [n for n in params if n not in self._entries]
        extra = [n for n in self._entries if n not in params]
        if missing or extra:
            what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the model lacks"
            more = len(missing) + len(extra) - 1
            raise UserError(f"mask does not match the model: it {what}" + (f" (and {more} more)" if more else ""))
        for n, p in params.items():
            if self._entries[n].shape != tuple(p.shape):
                raise UserError(
                    f"mask does not match the model: {n!r} is {self._entries[n].shape} in the mask, "
                    f"{tuple(p.shape)} in the model"
                )

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically (a reader never sees half a file).

        The file stores the positions of partly trainable tensors (format version 2,
        see :mod:`fps_profile.selection.mask_file`); :meth:`load` reads it and version 1 files
        (one bool tensor per parameter).
        """
        from fps_profile.selection.mask_file import write

        return write(Path(path), self._entries, self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Mask:
        """Read a mask written by :meth:`save` (any version); corrupt or foreign files fail clearly."""
        from fps_profile.selection.mask_file import read

        entries, meta = read(Path(path), device)
        return cls(entries, meta)
