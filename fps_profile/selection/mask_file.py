"""The mask file: safetensors with the positions of partly trainable tensors.

Version 2 (written since compact masks): one integer tensor per partly trainable
parameter, holding the sorted flat positions of its trainable entries; the
header's ``entries`` lists every parameter in model order as ``[name, shape,
kind, k]`` with kind ``all``, ``none`` or ``index``. Version 1 (read only): one
bool tensor per parameter, the model order in ``order``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry, rows_cols

FORMAT = "fps-profile-mask"
FORMAT_VERSION = "2"
_KINDS = ("all", "none", "index")


def write(path: Path, entries: dict[str, MaskEntry], meta: dict[str, str]) -> Path:
    """Write ``entries`` atomically as a version 2 file; returns ``path``."""
    from safetensors.torch import save_file

    if not path.parent.is_dir():
        raise UserError(f"cannot write mask to {str(path)!r}: directory {str(path.parent)!r} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tensors = {n: e.index.detach().to("cpu").contiguous() for n, e in entries.items() if e.index is not None}
    listing = [[n, list(e.shape), "index" if e.index is not None else ("all" if e.full else "none"), e.k]
               for n, e in entries.items()]
    header = {"format": FORMAT, "version": FORMAT_VERSION, "meta": json.dumps(meta), "entries": json.dumps(listing)}
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write mask to {str(path)!r}: {exc.strerror or exc}") from exc
    except Exception as exc:  # safetensors reports I/O failures (e.g. no such directory) as SafetensorError
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise UserError(f"cannot write mask to {str(path)!r}: {reason}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """``(entries or bool tensors by name, meta)`` of a version 1 or 2 file."""
    from safetensors import safe_open

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
    corrupt = UserError(f"{str(path)!r} has corrupt mask metadata")
    try:
        meta = json.loads(header.get("meta", "{}"))
        order = json.loads(header.get("order", "[]"))
        listing = json.loads(header["entries"]) if "entries" in header else None
    except json.JSONDecodeError as exc:
        raise corrupt from exc
    if not isinstance(meta, dict) or not isinstance(order, list):
        raise corrupt
    version = header.get("version", "1")
    if version == "1":
        if all(isinstance(n, str) for n in order) and sorted(order) == sorted(tensors):
            tensors = {n: tensors[n] for n in order}
        return tensors, meta
    if version != FORMAT_VERSION:
        raise UserError(f"{str(path)!r} is mask format version {version}; this fps-profile reads versions 1 and 2")
    if not isinstance(listing, list):
        raise corrupt
    entries = {}
    for item in listing:
        name, entry = _entry(item, tensors, torch.device(device), corrupt)
        entries[name] = entry
    if set(tensors) - set(entries) or len(entries) != len(listing):
        raise corrupt
    return entries, meta


def _entry(item, tensors: dict, device: torch.device, corrupt: UserError) -> tuple[str, MaskEntry]:
    if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and item[2] in _KINDS
            and isinstance(item[1], list) and all(type(s) is int and s >= 0 for s in item[1])
            and (item[3] is None or (type(item[3]) is int and item[3] >= 1))):
        raise corrupt
    name, shape, kind, k = item[0], tuple(item[1]), item[2], item[3]
    if kind != "index":
        if name in tensors:
            raise corrupt
        return name, (MaskEntry.all if kind == "all" else MaskEntry.none)(shape, device)
    index = tensors.get(name)
    if index is None or not _valid_positions(index, shape, k):
        raise UserError(f"mask entry {name!r} has corrupt positions")
    return name, MaskEntry.from_positions(shape, index, k)


def _valid_positions(index: torch.Tensor, shape: tuple[int, ...], k: int | None) -> bool:
    """1-D integer, strictly increasing, inside the tensor, ``k`` per row where ``k`` is set."""
    numel = math.prod(shape)
    if index.dtype not in (torch.int32, torch.int64) or index.dim() != 1 or not 0 < index.numel() <= numel:
        return False
    if int(index[0]) < 0 or int(index[-1]) >= numel or not bool((index[1:] > index[:-1]).all()):
        return False
    if k is None:
        return True
    rows, cols = rows_cols(shape)
    if index.numel() != rows * k:
        return False
    row_of = torch.div(index.view(rows, k), cols, rounding_mode="floor")
    return bool((row_of == torch.arange(rows, device=index.device).unsqueeze(1)).all())
