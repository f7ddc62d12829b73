"""Argument parsing helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from fps_profile.errors import UserError

def parse_bytes(text: str, what: str = "memory size") -> int:
    """``"8GiB"``, ``"500MB"`` -> bytes; a bare number is an error (:func:`fps_profile.units.parse_bytes`)."""
    from fps_profile.units import parse_bytes as parse

    return parse(text, what)


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
