"""Peak memory vs sequence length, for language-model rows (``seq_len`` set).

Drawn like :func:`fps_profile.plots.memory.memory_vs_batch`, with the sequence
length on the x axis at one batch size per model: one panel per model
measured at two or more sequence lengths, a line per series (each selector's
selection, the floor, full and sparse fine-tuning steps, each carrying its
series name as ``gid``), out-of-memory cells marked, the device's memory drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from matplotlib.figure import Figure

from fps_profile.plots import _layout as lay
from fps_profile.analysis.series import device_memory_bytes, models, series
from fps_profile.plots.memory import memory_scale, peak_lines
from fps_profile.rows.result import Result


def seq_len_batch(rows: Sequence[Result], model: str) -> int | None:
    """The batch size the figure uses for ``model``: the largest measured at every one of its sequence lengths."""
    per_seq: dict[int, set[int]] = {}
    for r in rows:
        if r.model == model and r.seq_len and r.status in ("ok", "oom"):
            per_seq.setdefault(r.seq_len, set()).add(r.batch_size)
    common = set.intersection(*per_seq.values()) if per_seq else set()
    return max(common, default=None)


def memory_vs_seq_len(rows: Sequence[Result], *, batch: int | None = None) -> Figure | None:
    """Peak memory vs sequence length: one panel per language model measured at several lengths.

    Args:
        rows: Rows of one (device, dtype) group, any sequence lengths.
        batch: Batch size of every panel (default per model: :func:`seq_len_batch`).

    Returns:
        The figure, or None when no model has two sequence lengths at a common batch size.
    """
    todo = []
    for model in models(r for r in rows if r.seq_len):
        b = batch if batch is not None else seq_len_batch(rows, model)
        # A row's sequence length stands in for its batch size, so the batch-keyed series serve as they are.
        at = [dataclasses.replace(r, batch_size=r.seq_len) for r in rows
              if r.model == model and r.seq_len and r.batch_size == b]
        if len({r.seq_len for r in at}) >= 2:
            todo.append((model, b, series(at, model, sparse=True)))
    if not todo:
        return None
    lm_rows = [r for r in rows if r.seq_len]
    line, div, unit = memory_scale(lm_rows, device_memory_bytes(lm_rows))
    fig, grid = lay.panels(len(todo))
    any_oom = False
    for i, ((model, b, ser), (ax,)) in enumerate(zip(todo, grid)):
        any_oom |= peak_lines(ax, ser, line, div, note=i == 0)
        lay.log2_batch_axis(ax, [n for s in ser.values() for n in s.rows], label=False)
        ax.set_xlabel(f"sequence length (tokens), batch size {b}")
        ax.set_ylabel(f"peak memory ({unit})")
        lay.model_title(ax, model, rows)
    lay.title(fig, "Peak memory vs sequence length", lm_rows)
    lay.legend(fig, [g[0] for g in grid], [lay.oom_handle()] if any_oom else [])
    return fig
