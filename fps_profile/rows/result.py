"""Result rows: one measurement each, with explicit units, stored as JSON lines (:mod:`fps_profile.rows.store`).

A row's fields are derived from the two tables that own them: the axes of its cell
(:data:`fps_profile.rows.schema.AXES`) and its figures (:data:`fps_profile.rows.metrics.METRICS`),
plus its status, error, timestamp, environment and schema version. Field names ending in
``_bytes`` are bytes, ``_s`` seconds. Rows written before an axis or metric existed read as
that field's row default, and keep their keys.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from typing import Any

from fps_profile.rows.key import cell_key
from fps_profile.rows.metrics import METRICS, figure_problem
from fps_profile.rows.schema import AXES, selector_variant

SCHEMA = "fps-profile/results/1"
STATUSES = ("ok", "oom", "error", "timeout")
#: Fields every row has (the rest may be missing from old rows and take their defaults).
REQUIRED = ("selector", "model", "batch_size", "dtype", "device", "phase")



class _RowMethods:
    """What every :class:`Result` can do (its fields come from the tables)."""

    def key(self) -> tuple:
        """Identity of the cell this row measures (:func:`~fps_profile.rows.key.cell_key`)."""
        return cell_key(self)

    @property
    def variant(self) -> str | None:
        """The selector with its options, e.g. ``gps[loss=ce,views=1]``."""
        return selector_variant(self.selector, self.options)

    @property
    def knobs(self) -> str:
        """The knob settings as a label suffix: ``""`` when plain, e.g. ``" +bf16 +ckpt +mb8"``."""
        from fps_profile.rows.label import knobs

        return knobs(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        missing = [n for n in REQUIRED if n not in data and n != "selector"]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        if data.get("status", "ok") not in STATUSES:
            raise ValueError(f"field 'status' must be one of {', '.join(STATUSES)}, not {data['status']!r}")
        for name, value in data.items():
            problem = figure_problem(name, value)
            if problem:
                raise ValueError(problem)
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _field(default):
    if callable(default):
        return dataclasses.field(default_factory=default)
    return dataclasses.field(default=default)


_AXES = {a.name: a for a in AXES if a.in_row}
Result = dataclasses.make_dataclass(
    "Result",
    [(n, object) for n in REQUIRED]
    + [("status", str, dataclasses.field(default="ok"))]
    + [(a.name, object, _field(a.row_default)) for a in _AXES.values() if a.name not in REQUIRED]
    + [(m.name, object, _field(m.default)) for m in METRICS]
    + [("error", object, dataclasses.field(default=None)),
       ("timestamp", str, dataclasses.field(default_factory=_now)),
       ("env", dict, dataclasses.field(default_factory=dict)),
       ("schema", str, dataclasses.field(default=SCHEMA))],
    bases=(_RowMethods,))
Result.__module__ = __name__
Result.__doc__ = ("One measurement.\n\nAttributes:\n"
                  + "\n".join(f"    {a.name}: {a.doc}" for a in _AXES.values())
                  + "\n    status: ok, oom, error or timeout.\n"
                  + "\n".join(f"    {m.name}: {m.doc}" for m in METRICS)
                  + "\n    error: Message for a status other than ok.\n    env: Versions, git commit, device, "
                    "driver, CPU, host.")
_FIELDS = frozenset(f.name for f in dataclasses.fields(Result))
