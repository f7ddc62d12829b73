"""Masks: parameter name -> bool tensor, True = trainable.

(GPS's code uses the opposite polarity, 1 = frozen; fps-profile never does.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError

FORMAT = "fps-profile-mask"
FORMAT_VERSION = "1"


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

    Args:
        tensors: The per-parameter masks.
        meta: Free-form string metadata (selector, budget, scope, model), saved with it.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None) -> None:
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                raise UserError(f"mask entry {name!r} is not a bool tensor")
        self._tensors = dict(tensors)
        self.meta = {str(k): str(v) for k, v in (meta or {}).items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        s = self.stats()
        return f"Mask({len(self)} tensors, {s.trainable:,}/{s.total:,} trainable)"

    @property
    def nbytes(self) -> int:
        """Bytes the mask's tensors occupy."""
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def stats(self) -> MaskStats:
        """Trainable counts per tensor and in total."""
        tensors = tuple(
            TensorStats(n, tuple(t.shape), t.numel(), int(t.sum())) for n, t in self._tensors.items()
        )
        return MaskStats(sum(t.numel for t in tensors), sum(t.trainable for t in tensors), tensors)

    def overlap(self, other: Mapping[str, torch.Tensor]) -> float:
        """Jaccard index |A & B| / |A | B| of the two masks' trainable entries."""
        if set(self) != set(other):
            raise UserError("masks cover different parameters; cannot compare them")
        inter = union = 0
        for name, a in self._tensors.items():
            b = other[name].to(a.device)
            if a.shape != b.shape:
                raise UserError(f"masks disagree on the shape of {name!r}: {tuple(a.shape)} vs {tuple(b.shape)}")
            inter += int((a & b).sum())
            union += int((a | b).sum())
        return inter / union if union else 1.0

    def check(self, model: nn.Module) -> None:
        """Fail with a one-line error unless names and shapes match ``model``'s parameters."""
        params = dict(model.named_parameters())
        missing = [n for n in params if n not in self._tensors]
        extra = [n for n in self._tensors if n not in params]
        if missing or extra:
            what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which the model lacks"
            more = len(missing) + len(extra) - 1
            raise UserError(f"mask does not match the model: it {what}" + (f" (and {more} more)" if more else ""))
        for n, p in params.items():
            if tuple(self._tensors[n].shape) != tuple(p.shape):
                raise UserError(
                    f"mask does not match the model: {n!r} is {tuple(self._tensors[n].shape)} in the mask, "
                    f"{tuple(p.shape)} in the model"
                )

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically (a reader never sees half a file)."""
        from safetensors.torch import save_file

        path = Path(path)
        if not path.parent.is_dir():
            raise UserError(f"cannot write mask to {str(path)!r}: directory {str(path.parent)!r} does not exist")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in self._tensors.items()}
        # safetensors stores tensors sorted by name; "order" keeps the model order for load()
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "meta": json.dumps(self.meta),
                "order": json.dumps(list(self._tensors))}
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
        except OSError as exc:
            raise UserError(f"cannot write mask to {str(path)!r}: {exc.strerror or exc}") from exc
        except Exception as exc:  # safetensors reports I/O failures (e.g. no such directory) as SafetensorError
            raise UserError(f"cannot write mask to {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Mask:
        """Read a mask written by :meth:`save`; corrupt or foreign files fail clearly."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"mask file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise UserError(f"{str(path)!r} is not a readable mask file ({str(exc).splitlines()[0]})") from exc
        if header.get("format") != FORMAT:
            raise UserError(f"{str(path)!r} is a safetensors file but not an fps-profile mask")
        try:
            meta = json.loads(header.get("meta", "{}"))
            order = json.loads(header.get("order", "[]"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{str(path)!r} has corrupt mask metadata") from exc
        if not isinstance(meta, dict) or not isinstance(order, list):
            raise UserError(f"{str(path)!r} has corrupt mask metadata")
        if all(isinstance(n, str) for n in order) and sorted(order) == sorted(tensors):
            tensors = {n: tensors[n] for n in order}
        return cls(tensors, meta)
