"""A cell, what one measurement measures, with its fields derived from :data:`~fps_profile.rows.schema.AXES`.

The driver builds cells (:mod:`fps_profile.run.grid`), sends them to isolated workers as
JSON, and keys rows by :func:`cell_key`; none of that needs torch.
"""

from __future__ import annotations

import dataclasses
import json

from fps_profile.rows import phases
from fps_profile.rows.key import cell_key
from fps_profile.rows.result import Result
from fps_profile.rows.schema import AXES, axis, selector_variant, trainer_of


class _CellMethods:
    """What every :class:`Cell` can do (its fields come from the schema)."""

    def __post_init__(self) -> None:
        if not phases.takes_selector(self.phase, self.selector):  # no selector: no budget or options
            object.__setattr__(self, "budget", None)
            object.__setattr__(self, "options", ())
        if self.phase == "inference":  # no backward: checkpointing changes nothing
            object.__setattr__(self, "checkpointing", False)
        if self.trainer is not None and trainer_of(self) is None:  # nothing trains a mask: no trainer
            object.__setattr__(self, "trainer", axis("trainer").default)
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
        values = {a.name: getattr(self, a.name) for a in AXES if a.in_row}
        values["options"] = dict(self.options) or None
        if not phases.takes_selector(self.phase, self.selector):  # none, or a baseline (head, frozen)
            values["scope"] = None
        if self.phase != "select":
            values["num_batches"] = None
        return Result(**{**values, **fields})


_LEADING = ("model", "batch_size", "phase", "selector")  # the positional order cells always had
Cell = dataclasses.make_dataclass(
    "Cell", [(a.name, object, dataclasses.field(default=a.default))
             for a in sorted(AXES, key=lambda a: _LEADING.index(a.name) if a.name in _LEADING else len(_LEADING))],
    bases=(_CellMethods,), frozen=True)
Cell.__module__ = __name__  # picklable, documented where it is defined
Cell.__doc__ = "What to measure: one value of every axis.\n\nAttributes:\n" + "\n".join(
    f"    {a.name}: {a.doc}" for a in AXES)
_FIELDS = frozenset(a.name for a in AXES)
