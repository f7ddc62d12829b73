"""Parsers of the axes that name where a cell's model, weights and data come from, and of the
fine-tuning settings (``seed``, ``steps``, ``lr``).

Paths are resolved here, when the grid is built, so every worker (another process, another
directory, another machine with the same file system) reads the file the user meant, and a
row says which one it was. Nothing here opens a file: whether it exists and fits is checked
before anything runs (:mod:`fps_profile.measure.inputs`), with one-line errors.
"""

from __future__ import annotations

import math
import os

from fps_profile.errors import UserError

_NONE = ("", "none", "off", "no", "false")
#: Data sets named rather than found on disk (:data:`fps_profile.data.EMBEDDED`).
EMBEDDED_DATA = ("digits",)
#: ``--weights`` value asking for timm's pretrained weights.
PRETRAINED = "pretrained"
SYNTHETIC = "synthetic"


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _text(value, what: str) -> str | None:
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        raise UserError(f"{what} must be a name or a path, not {value!r}")
    text = value.strip()
    return None if text.lower() in _NONE else text


def parse_weights(value) -> str | None:
    """``None``/``none`` -> None (random initialisation), ``pretrained`` as it is, a path -> absolute."""
    text = _text(value, "weights")
    if text is None or text == PRETRAINED:
        return text
    return _absolute(text)


def parse_data(value) -> str | None:
    """``None``/``none``/``synthetic`` -> None (synthetic inputs); ``digits[:classes]`` as it is; a path,
    with or without a ``:classes`` suffix, with the path made absolute (a path that exists is never split)."""
    text = _text(value, "data")
    if text is None or text.lower() == SYNTHETIC:
        return None
    source, sep, classes = text.rpartition(":")
    if text in EMBEDDED_DATA or (sep and source in EMBEDDED_DATA):
        return text
    if os.path.exists(os.path.expanduser(text)) or not sep:
        return _absolute(text)
    if source and os.path.exists(os.path.expanduser(source)):
        return f"{_absolute(source)}:{classes}"
    return text  # neither a name nor an existing path: the check before the run says so


def parse_model(value) -> str:
    """A model name as it is, except a file factory ``path/file.py:factory``, whose path is made absolute."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"model must be a name, not {value!r}")
    text = value.strip()
    target, sep, attr = text.rpartition(":")
    if sep and all(part.isidentifier() for part in attr.split(".")) and (target.endswith(".py") or "/" in target) \
            and not text.startswith("hf:") and os.path.isfile(os.path.expanduser(target)):
        return f"{_absolute(target)}:{attr}"
    return text


def parse_seed(value) -> int:
    """An integer >= 0: the seed of everything random in a cell."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0 or (isinstance(value, float) and n != value) or \
            (isinstance(value, str) and value.strip() != str(n)):
        raise UserError(f"seed must be an integer >= 0, not {value!r}")
    return n


def parse_lr(value) -> float | None:
    """A learning rate > 0, or None (``none``: the phase's default)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    try:
        lr = float(value)
    except (TypeError, ValueError):
        lr = math.nan
    if isinstance(value, bool) or not math.isfinite(lr) or lr <= 0:
        raise UserError(f"learning rate must be a number > 0 or none, not {value!r}")
    return lr


def short(value: str) -> str:
    """A path's file name (with a ``:classes`` suffix kept), anything else as it is: for labels."""
    source, sep, classes = value.rpartition(":")
    if sep and "/" in source:
        return f"{os.path.basename(source)}:{classes}"
    return os.path.basename(value) if "/" in value else value
