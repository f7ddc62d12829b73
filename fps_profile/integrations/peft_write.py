"""Write a :class:`~fps_profile.selection.mask.Mask` as an untrained PEFT SHiRA adapter directory.

:func:`write_adapter` converts the mask (:func:`fps_profile.integrations.peft.to_shira`), saves
PEFT's files and the mask's metadata under a temporary name, renames the directory at the
end, and puts the model back as it found it. ``PeftModel.from_pretrained(model, DIR)`` loads
the result; :func:`fps_profile.integrations.peft_read.mask_from_adapter` reads it back as a mask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.integrations.peft import ShiraPlan, plan_shira, to_shira, unwrap
from fps_profile.integrations.peft_read import META_FILE
from fps_profile.selection.mask import Mask

__all__ = ["check_adapter_dir", "write_adapter"]


def check_adapter_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, if an adapter can be written there: a new or empty directory whose parent exists.

    Raises:
        UserError: It exists and is not an empty directory, or its parent is missing.
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"cannot write the adapter to {str(out)!r}: it exists and is not an empty directory")
    if not out.absolute().parent.is_dir():
        raise UserError(f"cannot write the adapter to {str(out)!r}: directory {str(out.absolute().parent)!r} "
                        "does not exist")
    return out


def write_adapter(model: nn.Module, mask: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, *,
                  partial: bool = False) -> ShiraPlan:
    """Write ``mask`` as an untrained PEFT SHiRA adapter directory, ready for ``PeftModel.from_pretrained``.

    The directory holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``
    (zero deltas, the indices, the whole modules' current tensors) and
    :data:`META_FILE` (the mask's metadata and what was left out). It is written
    under a temporary name and renamed at the end: nothing half-written remains.
    ``model`` is left as found.

    Args:
        model: The plain model the mask was selected on.
        mask: The selection.
        out_dir: A new (or empty) directory.
        partial: Leave out what PEFT cannot express instead of failing.

    Returns:
        The :class:`ShiraPlan` written (its ``left_out`` says what the adapter lacks).

    Raises:
        UserError: ``out_dir`` exists and is not an empty directory, its parent is missing,
            or the mask cannot be converted (:func:`plan_shira`).
    """
    out = check_adapter_dir(out_dir)
    mask = mask if isinstance(mask, Mask) else Mask(mask)
    plan = plan_shira(model, mask, partial)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    tmp = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the left-out warning: the returned plan says it
        pm = to_shira(model, mask, partial=partial)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.absolute().parent))
        pm.save_pretrained(str(tmp))
        meta = {"mask": mask.meta, "r": plan.r, "left_out": [list(x) for x in plan.left_out]}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, out)  # onto a missing or empty directory: atomic
        tmp = None
    except OSError as exc:
        raise UserError(f"cannot write the adapter to {str(out)!r}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        unwrap(model)
        for p, flag in grads:
            p.requires_grad_(flag)
    return plan
