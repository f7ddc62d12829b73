"""A cell, what one measurement measures, with its fields derived from :data:`~fps_profile.rows.schema.AXES`.

The driver builds cells (:mod:`fps_profile.run.grid`), sends them to isolated workers as
JSON, and keys rows by :func:`cell_key`; none of that needs torch.
"""

from __future__ import annotations

import dataclasses
import json

from fps_profile.rows import phases
from fps_profile.rows.schema import AXES, selector_variant


def cell_key(cell) -> tuple:
    """Identity of the cell a :class:`Cell` or a row measures (the resume and comparison key).

    Slots first (selector variant, model, batch, dtype, device, phase, budget, scope), then the
    image size when set, then ``(name, value)`` for every other axis not at its default, in
    :data:`~fps_profile.rows.schema.AXES` order: an axis added later joins only when set, so
    rows written before it keep their keys.
    """
    key: list = []
    for a in AXES:
        if a.key == "none":
            continue
        value = a.value_for_key(cell)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            value = int(value)
        if a.key == "slot":
            key.append(value)
        elif value in (None, False, a.default) or (a.key == "named" and value == a.row_default):
            continue
        elif a.key == "bare":
            key.append(value)
        else:
            key.append((a.name, value))
    return tuple(key)


class _CellMethods:
    """What every :class:`Cell` can do (its fields come from the schema)."""

    def __post_init__(self) -> None:
        if not phases.takes_selector(self.phase, self.selector):  # no selector: no budget or options
            object.__setattr__(self, "budget", None)
            object.__setattr__(self, "options", ())
        if self.phase == "inference":  # no backward: checkpointing changes nothing
            object.__setattr__(self, "checkpointing", False)
        if not phases.takes_training(self.phase, self.selector):  # no steps taken: no steps or learning rate
            object.__setattr__(self, "steps", None)
            object.__setattr__(self, "lr", None)

    def key(self) -> tuple:
        """:func:`cell_key` of this cell."""
        return cell_key(self)

    def label(self) -> str:
        """:func:`fps_profile.rows.label.describe` of this cell."""
        from fps_profile.rows.label import describe

        return describe(self)

    @property
    def variant(self) -> str | None:
        """The selector with its options, e.g. ``gps[loss=ce,views=1]``."""
        return selector_variant(self.selector, self.options)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        data["options"] = tuple(tuple(kv) for kv in data.get("options", ()))
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    def empty_row(self, **fields):
        """A result row for this cell with nothing measured yet."""
        from fps_profile.rows.result import Result

        values = {a.name: getattr(self, a.name) for a in AXES if a.in_row}
        values["options"] = dict(self.options) or None
        if not phases.takes_selector(self.phase, self.selector):  # none, or a baseline (head, frozen)
            values["scope"] = None
        if self.phase != "select":
            values["num_batches"] = None
        return Result(**{**values, **fields})


Cell = dataclasses.make_dataclass(
    "Cell", [(a.name, object, dataclasses.field(default=a.default)) for a in AXES],
    bases=(_CellMethods,), frozen=True)
Cell.__module__ = __name__  # picklable, documented where it is defined
Cell.__doc__ = "What to measure: one value of every axis.\n\nAttributes:\n" + "\n".join(
    f"    {a.name}: {a.doc}" for a in AXES)
_FIELDS = frozenset(a.name for a in AXES)
