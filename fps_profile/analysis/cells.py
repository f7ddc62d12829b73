"""Naming rows by their cell, from the cell schema: ``--cell`` terms and the columns of a row list.

Every axis a row records (:data:`fps_profile.rows.schema.AXES`) is a ``--cell`` key, parsed by its
axis (``seq_len=512``, ``amp=bf16``, ``checkpointing=on``, ``dtype=bf16``), plus ``what`` (the
series name: a selector, ``floor``, ``train:full``, ``train:<selector>``) and ``batch`` (short for
``batch_size``). A list of rows shows the frame's axes (model, batch, dtype, device) always and
every other axis that some row sets, so a new axis shows without a change here.
"""

from __future__ import annotations

from collections.abc import Sequence

from fps_profile.errors import UserError, did_you_mean
from fps_profile.rows import phases, schema

#: Axes a row list always shows; ``what`` stands for selector and phase.
FRAME = ("model", "batch_size", "dtype", "device")
ALIASES = {"batch": "batch_size"}
_HIDDEN = ("selector", "phase", "options", "warmup", "repeats")


def what(row) -> str:
    """The row as the summary names it, from the phase table: a selector, ``floor``, ``train:full``,
    ``train:<selector>``, ``finetune:<selector>``, ``finetune:head``, ..."""
    return phases.get_phase(row.phase).series(row.selector) or "?"


def keys() -> tuple[str, ...]:
    """Every ``--cell`` key: ``what``, ``batch`` and the axes rows record."""
    return ("what", *ALIASES, *(a.name for a in schema.AXES if a.in_row and a.name != "options"))


def shown(value) -> str:
    """A value as tables and ``--cell`` write it: ``none``, ``on``/``off``, else its text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse_cell(spec: str) -> dict[str, object]:
    """``"what=gps model=vit_small_patch16_224 batch=16 seq_len=512"`` (spaces or commas) -> a filter:
    key -> value, parsed by its axis.

    Raises:
        UserError: A term that is not ``key=value`` with a known key, or a value its axis rejects.
    """
    known = keys()
    out: dict[str, object] = {}
    for term in spec.replace(",", " ").split():
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise UserError(f"--cell terms look like key=value (keys: {', '.join(known)}), not {term!r}")
        if key not in known:
            raise did_you_mean(key, known, "--cell key")
        name = ALIASES.get(key, key)
        a = schema.BY_NAME.get(name)
        if a is None or a.takes_text:
            out[name] = value
            continue
        try:
            out[name] = None if value.lower() == "none" and a.row_default is None else a.parse(value)
        except UserError as exc:
            raise UserError(f"--cell {term}: {exc}") from None
    return out


def value_of(row, name: str):
    """``row``'s value of a ``--cell`` key (``what``, or an axis name)."""
    return what(row) if name == "what" else getattr(row, name, None)


def matches(row, wanted: dict[str, object]) -> bool:
    """Whether ``row`` has every value of a :func:`parse_cell` filter."""
    for name, value in wanted.items():
        have = value_of(row, name)
        if isinstance(value, str) and (name == "what" or schema.BY_NAME[name].takes_text):
            if shown(have) != value:
                return False
        elif have != value:
            return False
    return True


def find(rows: Sequence, spec: str) -> list:
    """The rows matching a ``--cell`` spec.

    Raises:
        UserError: Bad spec, or nothing matches (naming the values the rows have).
    """
    wanted = parse_cell(spec)
    found = [r for r in rows if matches(r, wanted)]
    if not found:
        for name, value in wanted.items():
            if not any(matches(r, {name: value}) for r in rows):
                have = sorted({shown(value_of(r, name)) for r in rows})
                raise did_you_mean(shown(value), have, f"{name} in this file", show_known=len(have) <= 12)
        raise UserError(f"no row matches --cell {spec!r} (each term matches some row, but not all together)")
    return found


def columns(rows: Sequence) -> list[str]:
    """The axes a list of ``rows`` shows: :data:`FRAME`, then every other axis some row sets
    (a value other than none, off or the axis's default), in schema order."""
    out = list(FRAME)
    for a in schema.AXES:
        if not a.in_row or a.name in FRAME or a.name in _HIDDEN:
            continue
        if any(getattr(r, a.name, None) not in (None, False, a.default) for r in rows):
            out.append(a.name)
    return out


def header(name: str) -> str:
    """A column's heading: its ``--cell`` key."""
    return next((alias for alias, full in ALIASES.items() if full == name), name)
