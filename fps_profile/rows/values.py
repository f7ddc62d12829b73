"""Parsers of one axis value each: the canonical form, or a one-line :class:`UserError`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fps_profile.errors import UserError

_OFF = ("", "none", "off", "no", "false", "fp32", "float32")
AMP_CHOICES = ("fp16", "bf16", "fp16-nocache", "bf16-nocache")
DTYPES = ("float32", "bfloat16", "float16")


def same(value):
    return value


def positive_int(what: str, *, optional: bool = False) -> Callable[[Any], int | None]:
    """A parser of integers >= 1 (``None``/``"none"`` -> None when ``optional``)."""

    def parse(value):
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _OFF)):
            return None
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if isinstance(value, bool) or n < 1 or (isinstance(value, float) and n != value) or \
                (isinstance(value, str) and value.strip() != str(n)):
            raise UserError(f"{what} must be an integer >= 1{' or none' if optional else ''}, not {value!r}")
        return n

    return parse


def parse_amp(value) -> str | None:
    """``None``/``"none"``/``"off"`` -> None; ``"fp16"``, ``"bf16"`` and their ``-nocache`` forms as they are.

    Raises:
        UserError: Anything else.
    """
    if value is None or value is False:
        return None
    text = str(value).strip().lower()
    if text in _OFF:
        return None
    if text not in AMP_CHOICES:
        raise UserError(f"amp must be one of {', '.join(AMP_CHOICES)} or none, not {value!r}")
    return text


def parse_checkpointing(value) -> bool:
    """``on``/``true``/``1`` -> True, ``off``/``none``/``false``/``0`` -> False.

    Raises:
        UserError: Anything else.
    """
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1", "checkpointing"):
        return True
    if text in _OFF + ("0",):
        return False
    raise UserError(f"checkpointing must be on or off, not {value!r}")


parse_micro_batch = positive_int("micro_batch", optional=True)


def parse_dtype_name(value) -> str:
    """``float32``, ``bfloat16`` or ``float16`` (also ``fp32``, ``bf16``, ``fp16``)."""
    text = str(value).strip().lower()
    text = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(text, text)
    if text not in DTYPES:
        raise UserError(f"unknown dtype {value!r} (use {', '.join(DTYPES)})")
    return text


def parse_budget(value) -> str:
    """A selection budget as rows write it: ``k=1``, ``fraction=0.01`` or ``shira:8`` (the ``r*(m+n)``
    best entries of every ranked ``m x n`` tensor, PEFT SHiRA's size: :mod:`fps_profile.selection.shira`).

    Raises:
        UserError: Anything else.
    """
    text = str(value).strip()
    head, colon, r = text.partition(":")
    if colon and head.strip() == "shira" and r.strip().isdigit() and int(r) >= 1:
        return f"shira:{int(r)}"
    key, sep, rest = text.partition("=")
    try:
        if sep and key.strip() == "k" and int(rest) >= 1:
            return f"k={int(rest)}"
        if sep and key.strip() == "fraction" and 0 < float(rest) <= 1:
            return f"fraction={float(rest)}"  # as the sweep has always written it (rows' keys)
    except ValueError:
        pass
    raise UserError(f"budget must look like k=1, fraction=0.01 or shira:8 (k >= 1, 0 < fraction <= 1, "
                    f"r >= 1), not {value!r}")


#: The trainers of a sparse ``train_step``: name -> ``"module:function"`` building the step (as
#: :func:`fps_profile.measure.phases.train_step_fn` takes its arguments; imported when used).
TRAINERS: dict[str, str] = {
    "fps-profile": "fps_profile.measure.phases:train_step_fn",
    "peft-shira": "fps_profile.integrations.peft_step:peft_train_step_fn",
}


def parse_trainer(value) -> str:
    """A :data:`TRAINERS` name (``fps-profile``, ``peft-shira``).

    Raises:
        UserError: Anything else.
    """
    text = str(value).strip().lower()
    if text not in TRAINERS:
        from fps_profile.errors import did_you_mean

        raise did_you_mean(str(value), TRAINERS, "trainer")
    return text


def nonneg_int(what: str):
    def parse(value):
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = -1
        if isinstance(value, bool) or n < 0:
            raise UserError(f"{what} must be an integer >= 0, not {value!r}")
        return n

    return parse


def parse_offload(value) -> str | None:
    """``None``/``"none"``/``"off"`` -> None; ``"cpu"`` -> ``"cpu"`` (FSDP2's ``CPUOffloadPolicy``).

    Raises:
        UserError: Anything else.
    """
    text = "" if value is None or value is False else str(value).strip().lower()
    if text in _OFF:
        return None
    if text != "cpu":
        raise UserError(f"offload must be cpu or none, not {value!r}")
    return text
