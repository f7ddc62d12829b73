"""Weights from a file (``--weights PATH``) and their provenance (:class:`WeightsInfo`);
timm's pretrained weights (``--weights pretrained``) are in :mod:`fps_profile.models.pretrained`.

A file is ``.safetensors``, or a torch state dict (``.pt``, ``.pth``, ``.bin``) read
with ``torch.load(weights_only=True)``: tensors and plain containers only, so a
pickle that would call anything else is refused, never executed. A training
checkpoint that keeps its state dict under ``state_dict``, ``model_state_dict``,
``model`` or ``module`` is unwrapped, and a ``module.`` (DDP) or ``_orig_mod.``
(``torch.compile``) prefix on every key is dropped.

Every tensor must fit: a missing or unexpected key, or a shape that differs, is a
one-line error, and the model is left untouched. One exception, as timm makes it
for pretrained weights of another ``num_classes``: classifier tensors (the
classifier :func:`fps_profile.models.parts.find_classifier` finds) whose shape differs
keep the model's random initialisation, and :class:`WeightsInfo` says which.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError

PRETRAINED = "pretrained"
#: File suffixes :func:`read_state_dict` reads.
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_WRAPPERS = ("state_dict", "model_state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 3  # keys named in an error line


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights came from.

    Attributes:
        source: The file's absolute path, or timm's hub id (or URL) for pretrained weights.
        sha256: Hex SHA-256 of the file's bytes (None if it cannot be told, e.g. a
            pretrained file timm fetched where it is not found afterwards).
        reinitialized: State-dict keys left at random initialisation because their
            shape did not fit (the classifier, for another number of classes).
        file: The file read (for pretrained weights: where the cache keeps it), or None.
    """

    source: str
    sha256: str | None
    reinitialized: tuple[str, ...] = ()
    file: str | None = None

    def fields(self) -> dict:
        """The provenance as plain values for a result row."""
        return {"weights_source": self.source, "weights_sha256": self.sha256,
                "weights_reinitialized": list(self.reinitialized)}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_spec(spec: str) -> None:
    """Fail with one line unless ``spec`` is ``pretrained`` or an existing file with a known suffix."""
    if spec == PRETRAINED:
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"weights {spec!r}: no such file ({PRETRAINED!r} asks for timm's pretrained weights)")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"weights {spec!r}: unknown format {path.suffix or '(no suffix)'!r} "
                        f"(known: {', '.join(SUFFIXES)})")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def safe_torch_load(path: str | os.PathLike, spec: str, what: str = "weights") -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors.

    Args:
        path: The file.
        spec: The file as the user gave it (for messages).
        what: What the file is for (``weights``, ``data``), for messages.

    Raises:
        UserError: A pickle that needs arbitrary code (refused, never run; the message
            names the callable when torch tells it), or a corrupt file.
    """
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it better
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        text = str(exc)
        needs = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs:
            raise UserError(f"{what} {spec!r} refused: loading it would call {needs.group(1)} (arbitrary code); "
                            "save plain tensors (torch.save of a dict of tensors) or safetensors") from None
        if "Weights only load failed" in text:
            raise UserError(f"{what} {spec!r} refused: not a torch.save file that loads without unpickling "
                            "arbitrary objects (a raw pickle, or corrupt)") from None
        raise UserError(f"{what} {spec!r} cannot be read (corrupt?): {first_line(exc)}") from None


def _unwrap(obj: object, spec: str) -> dict[str, torch.Tensor]:
    def is_state_dict(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in d.items())

    if not is_state_dict(obj):
        inner = [obj[k] for k in _WRAPPERS if isinstance(obj, dict) and is_state_dict(obj.get(k))]
        if not inner:
            what = f"a dict with keys {', '.join(map(repr, list(obj)[:_SHOW]))}" if isinstance(obj, dict) \
                else f"a {type(obj).__name__}"
            raise UserError(f"weights {spec!r} hold {what}, not a state dict (names -> tensors)")
        obj = inner[0]
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in a weights file (on the CPU) and the file's SHA-256.

    Raises:
        UserError: Missing file, unknown suffix, a pickle that needs arbitrary code,
            a corrupt file, or contents that are not a state dict (one line each).
    """
    spec = str(path)
    check_weights_spec(spec)
    path = Path(spec).expanduser()
    digest = file_sha256(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError
            raise UserError(f"weights {spec!r} are not a valid safetensors file: {first_line(exc)}") from None
    else:
        state = safe_torch_load(path, spec)
    return _unwrap(state, spec), digest


def _listed(keys: list[str]) -> str:
    more = f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _aliases(model: nn.Module) -> dict[str, set[str]]:
    """Names of one tensor (tied weights: a file saved without the copy still fits), by identity,
    so it holds on the meta device too."""
    groups: dict[int, set[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(t), set()).add(name)
    return {k: g for g in groups.values() for k in g}


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], spec: str,
                   name: str = "the model") -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Check ``state`` against ``model`` and drop the classifier tensors whose shape differs.

    Returns:
        The state dict to load and the keys left at random initialisation.

    Raises:
        UserError: Missing or unexpected keys, or a non-classifier shape that differs.
    """
    from fps_profile.models.parts import find_classifier

    own = model.state_dict()
    classifier = find_classifier(model)
    reinit, wrong = [], []
    for k, t in state.items():
        if k in own and tuple(t.shape) != tuple(own[k].shape):
            (reinit if classifier.owns(k) else wrong).append(k)
    if wrong:
        shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in wrong]
        raise UserError(f"weights {spec!r} do not fit {name}: {len(wrong)} tensor(s) of another shape "
                        f"(file vs model): {_listed(shapes)}")
    aliases = _aliases(model)
    missing = [k for k in own if k not in state and k not in reinit and not (aliases.get(k, set()) & state.keys())]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"{len(missing)} missing ({_listed(missing)})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected ({_listed(unexpected)})"] if unexpected else [])
        raise UserError(f"weights {spec!r} do not fit {name}: {'; '.join(parts)}")
    return {k: v for k, v in state.items() if k not in reinit}, tuple(reinit)


def load_weights_file(model: nn.Module, path: str | os.PathLike, name: str = "the model") -> WeightsInfo:
    """Load a weights file into ``model`` (in place, converted to its dtype and device).

    Nothing is loaded unless every tensor fits (see the module docstring). A model on
    the ``meta`` device (what the sim builds) is only checked: the same errors and the
    same :class:`WeightsInfo`, no values copied.

    Args:
        model: The model, built with the task's number of classes.
        path: ``.safetensors``, ``.pt``, ``.pth`` or ``.bin``.
        name: The model's name, for error messages.

    Raises:
        UserError: :func:`read_state_dict`'s and :func:`fit_state_dict`'s errors.
    """
    spec = str(path)
    state, digest = read_state_dict(path)
    state, reinit = fit_state_dict(model, state, spec, name)
    if not all(t.device.type == "meta" for t in model.state_dict().values()):
        with torch.no_grad():
            model.load_state_dict(state, strict=False)
    where = str(Path(spec).expanduser().resolve())
    return WeightsInfo(where, digest, reinit, where)
