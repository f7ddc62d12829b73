"""A saved PEFT SHiRA adapter's trainable entries as a :class:`~fps_profile.selection.mask.Mask`.

Reads PEFT's files directly (``adapter_config.json`` and ``adapter_model.safetensors``,
as peft 0.21.2 writes them), so it needs ``safetensors`` but not ``peft``. Writing
adapters: :mod:`fps_profile.integrations.peft`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry

#: The mask's metadata, written beside PEFT's files by :func:`fps_profile.integrations.peft_write.write_adapter`.
META_FILE = "fps_profile_mask.json"
PREFIX = "base_model.model."  # PEFT's key prefix in adapter_model.safetensors


def check_plain(model: nn.Module) -> None:
    """Fail with a one-line error if ``model`` carries PEFT modules already."""
    if any(type(m).__module__.startswith("peft.") for m in model.modules()):
        raise UserError("the model has PEFT adapters already; pass the plain model (before get_peft_model)")


def mask_from_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> Mask:
    """Read a saved SHiRA adapter's trainable entries back as a :class:`Mask` over ``model``.

    SHiRA's indices give the trainable entries of each adapted Linear weight; the
    tensors saved for ``modules_to_save`` are trainable whole; everything else is
    frozen. Needs ``safetensors`` only, not ``peft``.

    Args:
        model: The plain base model the adapter was made for.
        adapter_dir: A directory written by PEFT's ``save_pretrained`` (or
            :func:`fps_profile.integrations.peft_write.write_adapter`).

    Raises:
        UserError: Not a SHiRA adapter directory, or one that does not fit ``model``.
    """
    from safetensors import safe_open

    check_plain(model)
    d = Path(adapter_dir)
    config_path, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise UserError(f"{str(d)!r} is not a PEFT adapter directory (needs adapter_config.json and "
                        "adapter_model.safetensors)")
    try:
        config = json.loads(config_path.read_text())
        kind = config.get("peft_type")
    except (ValueError, AttributeError):
        raise UserError(f"{str(config_path)!r} is not a PEFT adapter config (not a JSON object)") from None
    if kind != "SHIRA":
        raise UserError(f"{str(d)!r} holds a {kind} adapter, not SHiRA")
    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    entries: dict[str, MaskEntry] = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                name = key.removeprefix(PREFIX)
                if name.endswith(".shira_weight") or name in buffers:
                    continue
                if name.endswith(".shira_indices"):
                    pname = name.removesuffix(".shira_indices") + ".weight"
                    entries[pname] = _indices_entry(d, pname, params.get(pname), f.get_tensor(key))
                elif name in params and tuple(f.get_slice(key).get_shape()) == tuple(params[name].shape):
                    entries[name] = MaskEntry.all(params[name].shape, params[name].device)
                else:
                    raise UserError(f"adapter {str(d)!r} holds {name!r}, which the model lacks or shapes differently")
    except UserError:
        raise
    except Exception as exc:  # safetensors reports a corrupt file as SafetensorError
        raise UserError(f"cannot read {str(weights)!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if not entries:
        raise UserError(f"adapter {str(d)!r} trains nothing")
    meta = {"source": f"peft shira adapter {d}"}
    if (d / META_FILE).is_file():
        try:
            meta |= {k: str(v) for k, v in json.loads((d / META_FILE).read_text()).get("mask", {}).items()}
        except (ValueError, AttributeError):
            pass  # provenance only; the adapter itself was read
    return Mask({n: entries.get(n) or MaskEntry.none(p.shape, p.device) for n, p in params.items()}, meta)


def _indices_entry(d: Path, pname: str, weight: torch.Tensor | None, idx: torch.Tensor) -> MaskEntry:
    """SHiRA's ``[2, N]`` (row, column) indices of ``pname`` as sorted flat positions."""
    if weight is None or weight.dim() != 2:
        raise UserError(f"adapter {str(d)!r} adapts {pname!r}, which the model lacks (or is not 2-D)")
    m, n = weight.shape
    idx = idx.round().long() if idx.is_floating_point() else idx.long()  # float on Windows (PEFT's note)
    if idx.dim() != 2 or idx.shape[0] != 2 or (idx.numel() and (idx.min() < 0 or idx[0].max() >= m
                                                                  or idx[1].max() >= n)):
        raise UserError(f"adapter {str(d)!r}: the SHiRA indices of {pname!r} do not fit its {m}x{n} weight")
    flat = (idx[0] * n + idx[1]).sort().values
    if flat.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
        raise UserError(f"adapter {str(d)!r}: the SHiRA indices of {pname!r} repeat a position")
    return MaskEntry.from_positions((m, n), flat.to(weight.device))
