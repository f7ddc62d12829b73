"""Masks: parameter name -> bool tensor, True = trainable, stored compactly.

(GPS's code uses the opposite polarity, 1 = frozen; fps-profile never does.)

A :class:`Mask` keeps, per tensor, a :class:`MaskEntry`: all trainable, none,
or the sorted flat positions of the trainable entries (int32; int64 for a
tensor of 2**31 entries or more), so a mask that trains 0.2% of a model costs
about 4 bytes per trainable entry instead of a bool per parameter. ``mask[name]``
still returns the bool tensor, built on demand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry


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

    def overlap(self, other: Mapping[str, torch.Tensor]) -> float:
        """Jaccard index |A & B| / |A | B| of the two masks' trainable entries."""
        if set(self) != set(other):
            raise UserError("masks cover different parameters; cannot compare them")
        inter = union = 0
        for name, a in self._entries.items():
            b = other.entry(name) if isinstance(other, Mask) else None
            if b is None:
                t = other[name]
                if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                    raise UserError(f"mask entry {name!r} is not a bool tensor")
                if tuple(t.shape) == a.shape:
                    b = MaskEntry.from_bool(t)
            if b is None or b.shape != a.shape:
                shape = b.shape if b is not None else tuple(other[name].shape)
                raise UserError(f"masks disagree on the shape of {name!r}: {a.shape} vs {shape}")
            both = a.intersection(b)
            inter += both
            union += a.count + b.count - both
        return inter / union if union else 1.0

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
