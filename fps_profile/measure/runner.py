"""One measurement: the body of every isolated worker process.

:func:`measure` does the work in the current process; the worker processes
(:mod:`fps_profile.run.forkserver` children and ``python -m fps_profile.run.worker``)
run it through :func:`measure_to_file`, started by
:func:`fps_profile.run.isolation.run_isolated`, which never lets one crash or hang
lose a row.

Protocol of one measurement, the same on every backend (:func:`build_cell` and the
backend's :meth:`~fps_profile.measure.backends.Backend.measure`): build the model and
batches (and, for a sparse train step, the selector's mask) outside any measured region;
warm up; one memory-tracked run; then ``repeats`` timed runs whose median is reported.
Memory and time are taken in separate runs so trackers never slow the timing.
"""

from __future__ import annotations

import os
from pathlib import Path

from fps_profile.rows.cell import Cell
from fps_profile.rows.result import Result


def one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def measure(cell: Cell) -> Result:
    """Measure ``cell`` in this process (the worker's job; prefer :func:`fps_profile.run.isolation.run_isolated`).

    Never raises for a failed measurement: an out-of-memory becomes status
    ``oom``, any other exception status ``error`` with its message.
    """
    from fps_profile.knobs import note
    from fps_profile.measure import env
    from fps_profile.measure.backends import backend_for

    row = cell.empty_row(env=env.collect())
    if note(cell):
        row.env["knobs_note"] = note(cell)
    try:
        backend = backend_for(cell.device)
        row.env.update(backend.env(cell.device))
        backend.measure(cell, row)
    except Exception as exc:  # recorded as data, never lost
        row.status = "oom" if _is_oom(exc) else "error"
        row.error = one_line(exc)
    return row


def build_cell(cell: Cell, model, batches, backend, row: Result):
    """Build ``cell``'s phase on ``model`` and ``batches`` (nothing measured yet) and record the
    parameter counts; returns the callable every run calls (:func:`fps_profile.measure.phases.prepare`)."""
    from fps_profile.measure import phases

    row.params_total = sum(p.numel() for p in model.parameters())
    prepared = phases.prepare(cell, model, batches, backend)
    row.params_trainable = prepared.params_trainable
    return prepared.fn


def measure_to_file(cell_json: str, out_path: str | os.PathLike) -> None:
    """Measure a cell given as JSON and write its row atomically (body of every worker process)."""
    row = measure(Cell.from_json(cell_json))
    out = Path(out_path)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(row.to_json())
    os.replace(tmp, out)
