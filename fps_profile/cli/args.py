"""Argument parsing helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import re

from fps_profile.errors import UserError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"500MB"``, ``"1024"`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"not a memory size: {text!r} (use e.g. 8GiB, 500MB or a byte count)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def comma_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def int_list(text: str, what: str = "batch size") -> list[int]:
    out = []
    for part in comma_list(text):
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"{what} must be an integer >= 1, not {part!r}") from None
        if value < 1:
            raise UserError(f"{what} must be an integer >= 1, not {part!r}")
        out.append(value)
    if not out:
        raise UserError(f"no {what} given")
    return out


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` for selector options; values parsed as int, float, bool or str."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"selector option must look like key=value, not {text!r}")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    return key, raw
