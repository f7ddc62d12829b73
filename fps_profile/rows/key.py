"""The identity of a cell: what resuming a sweep and comparing two results files match rows by."""

from __future__ import annotations

from fps_profile.rows import schema


def cell_key(cell) -> tuple:
    """Identity of the cell a :class:`Cell` or a row measures (the resume and comparison key).

    Slots first (selector variant, model, batch, dtype, device, phase, budget, scope), then the
    image size when set, then ``(name, value)`` for every other axis not at its default, in
    :data:`~fps_profile.rows.schema.AXES` order: an axis added later joins only when set, so
    rows written before it keep their keys.
    """
    key: list = []
    for a in schema.AXES:
        if a.key == "none":
            continue
        value = a.value_for_key(cell)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        if a.key == "slot":
            key.append(value)
        elif value is None or value is False or value == a.default:
            continue
        elif a.key == "bare":
            key.append(value)
        else:
            key.append((a.name, value))
    return tuple(key)
