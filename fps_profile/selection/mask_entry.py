"""One tensor's part of a mask, stored compactly: all trainable, none, or the sorted flat positions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch



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
