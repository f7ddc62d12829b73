"""A sweep's TOML config (``sweep --config``): read, every key typed as its flag is.

A key takes what its flag takes: a swept axis a list, or one value (a one-item list), or a
comma-separated string, as on the command line; numbers may be written as numbers or as text;
names (selectors, models, devices ...) are text. Anything else is an error naming the key.
Keys that are not axes of the cell schema are in :data:`SETTINGS`.
"""

from __future__ import annotations

import tomllib

from fps_profile.cli.args import comma_list
from fps_profile.errors import UserError, did_you_mean
from fps_profile.rows import schema
from fps_profile.units import parse_bytes, parse_seconds


def _text(value, what: str):
    if not isinstance(value, str):
        raise UserError(f"{what} must be text, not {value!r}")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{what} must be true or false, not {value!r}")
    return value


def _count(value, what: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0 or str(value).strip() != str(n):
        raise UserError(f"{what} must be an integer >= 0, not {value!r}")
    return n


#: Keys of a config besides the axes: key -> parser of ``(value, what)``. ``out`` and ``executor``
#: are text, ``timeout`` a duration (seconds, or with s/min/h), ``retries`` an integer >= 0.
SETTINGS = {"out": _text, "timeout": parse_seconds, "max_batch": _flag, "executor": _text, "address": _text,
            "retries": _count, "frontier": _flag, "memory_budget": parse_bytes}


def by_grid() -> dict:
    """Config key -> its :class:`~fps_profile.rows.schema.Axis` (a plugin's axes included)."""
    return {a.grid: a for a in schema.AXES if a.grid and a.name not in ("options", "memory_budget")}


def load_config(path: str) -> dict:
    """The grid table of a TOML file (its ``[sweep]`` table if it has one), keys checked.

    Raises:
        UserError: Missing or malformed file, an unknown key, or a ``[sweep]`` that is not a table.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path!r} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path!r} is not valid TOML: {exc}") from None
    conf = data.get("sweep", data)
    if not isinstance(conf, dict):
        raise UserError(f"config {path!r}: sweep must be a table [sweep], not {conf!r}")
    known = set(by_grid()) | set(SETTINGS) | {"options"}
    for key in conf:
        if key not in known:
            raise UserError(f"config {path!r}: {did_you_mean(key, known, 'key')}")
    return conf


def _one(a, value, what: str):
    if isinstance(value, (list, dict)):
        raise UserError(f"{what} takes {'a list of single values' if a.swept else 'one value'}, not {value!r}")
    if a.takes_text and not isinstance(value, str):
        raise UserError(f"{what} takes names as text, not {value!r}")
    try:
        return a.parse(value)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def axis_value(a, value, what: str):
    """One axis's value from a flag or a config key, parsed: a list for a swept axis (a single value,
    or a comma-separated string, becomes a list), one value otherwise.

    Args:
        a: The :class:`~fps_profile.rows.schema.Axis`.
        value: As given (a flag's text, or a TOML value).
        what: Where it comes from, for errors (``--batch-size``, ``config 'g.toml': batch_sizes``).
    """
    if not a.swept:
        return _one(a, value, what)
    if isinstance(value, str):
        items = comma_list(value)
        if a.name == "checkpointing" and not items:
            items = ["on"]
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    return [_one(a, v, what) for v in items] or [a.default]


def setting_value(key: str, value, where: str):
    """A :data:`SETTINGS` key's value, parsed (one-line error naming the key)."""
    return SETTINGS[key](value, f"{where}: {key}")


def options_value(value, where: str) -> dict[str, dict]:
    """``[options.<selector>]`` tables: selector -> {option: single value}."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise UserError(f"{where}: options must be tables [options.<selector>] of key = value, not {value!r}")
    for sel, opts in value.items():
        for key, v in opts.items():
            if isinstance(v, (list, dict)):
                raise UserError(f"{where}: options.{sel}.{key} takes one value, not {v!r}")
    return {sel: dict(opts) for sel, opts in value.items()}
