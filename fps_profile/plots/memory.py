"""Memory figures: peak vs batch size, peak ratio to a reference selector, peak vs model size.

Each function takes the rows of one (device, dtype) group and returns a
:class:`~matplotlib.figure.Figure` (None when the rows hold nothing to plot).
Every plotted line carries its series name as ``gid`` (``"fps"``, ``"floor"``,
``"full"``; ``"oom:<name>"`` for out-of-memory marks) and every panel its
model name, so callers and tests can read the plotted points back.
"""

from __future__ import annotations

import re

from collections.abc import Sequence

from matplotlib.figure import Figure

from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.analysis.series import FLOOR, FULL, TRAIN_FLOOR, sort_names
from fps_profile.analysis.series import device_memory_bytes, models, peak, ratios, series
from fps_profile.rows.result import Result
from fps_profile.units import bytes_scale, fmt_bytes

# A device-memory line further above the data than this factor would flatten every curve: it is noted instead.
MEMORY_LINE_MAX_HEADROOM = 4.0
DEVICE_MEMORY_COLOR = "#b2182b"


def memory_vs_batch(rows: Sequence[Result], *, device_memory: int | None = None) -> Figure | None:
    """Peak memory vs batch size: one panel per model, a line per selector, the floor and full fine-tuning.

    Args:
        rows: Rows of one (device, dtype) group.
        device_memory: Bytes of device memory for the horizontal line (default: from the rows' env).
    """
    names = [m for m in models(rows) if any(r.model == m and r.status in ("ok", "oom") for r in rows)]
    if not names:
        return None
    device_memory, div, unit = memory_scale(rows, device_memory or device_memory_bytes(rows))
    fig, grid = lay.panels(len(names))
    any_oom = False
    for i, (model, (ax,)) in enumerate(zip(names, grid)):
        ser = series(rows, model)
        any_oom |= peak_lines(ax, ser, device_memory, div, note=i == 0)
        lay.log2_batch_axis(ax, [b for s in ser.values() for b in s.rows])
        ax.set_ylabel(f"peak memory ({unit})")
        lay.model_title(ax, model, rows)
    lay.title(fig, "Peak memory vs batch size", rows)
    lay.legend(fig, [g[0] for g in grid], [lay.oom_handle()] if any_oom else [])
    return fig


def memory_scale(rows: Sequence[Result], device_memory: int | None) -> tuple[tuple | None, int, str]:
    """``(line, divisor, unit)``: the device-memory line ``(bytes, drawn)`` if known, and the axis unit."""
    largest = max((peak(r) or 0 for r in rows if r.status == "ok"), default=0)
    if not device_memory:
        return None, *bytes_scale(largest)
    drawn = not largest or device_memory <= MEMORY_LINE_MAX_HEADROOM * largest
    return (device_memory, drawn), *bytes_scale(max(largest, device_memory) if drawn else largest)


def peak_lines(ax, ser: dict, device_memory: int | None, div: float, *, note: bool) -> bool:
    """One panel's peak-memory lines (one per series, x = the series' keys), out-of-memory marks,
    the device's memory line and the y range; True when the panel has an out-of-memory mark."""
    has_oom = lay.mark_ooms(ax, {n: s.batches("oom") for n, s in ser.items()})
    top = 0.0
    for name, s in ser.items():
        xs, ys = s.xy(peak)
        if xs:
            ax.plot(xs, [y / div for y in ys], gid=name, **st.style(name).kwargs())
            top = max(top, max(ys) / div)
    top = max(top, _device_memory_line(ax, device_memory, div, note=note))
    ax.set_ylim(0, (top or 1) / (lay.OOM_STRIP if has_oom else 0.95))
    return has_oom


def _device_memory_line(ax, line: tuple | None, div: int, *, note: bool = True) -> float:
    """Draw the device's memory (or note it is off scale); returns its height in axis units (0 if not drawn)."""
    if line is None:
        return 0.0
    memory, drawn = line
    if not drawn:
        if note:
            ax.text(0.02, 0.02, f"device memory {fmt_bytes(memory)} (off scale)", transform=ax.transAxes,
                    fontsize=6.5, color=DEVICE_MEMORY_COLOR)
        return 0.0
    memory_line(ax, memory, div, text=f"device memory {fmt_bytes(memory)}")
    return memory / div


def memory_line(ax, memory: int, div: float, *, text: str | None = None, label: str = "_",
                gid: str = "device_memory", color: str = DEVICE_MEMORY_COLOR, linestyle="-.") -> None:
    """A horizontal line at ``memory`` bytes (``div`` bytes per axis unit): ``text`` written above its left end,
    ``label`` its legend entry (none by default)."""
    ax.axhline(memory / div, color=color, linewidth=0.9, linestyle=linestyle, gid=gid, label=label)
    if text:
        ax.annotate(text, (0.02, memory / div), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=6.5, color=color, va="bottom")


def ratio_vs_batch(rows: Sequence[Result], *, reference: str = "fps") -> Figure | None:
    """Each selector's selection peak over the reference's, vs batch size, one panel per model.

    Returns:
        The figure, or None when no model has the reference and another selector at a common batch.
    """
    todo = []
    for model in models(rows):
        ser = series(rows, model)
        ref = ser.get(reference)
        lines = {n: ratios(s, ref) for n, s in ser.items()
                 if n not in (reference, FLOOR, FULL, TRAIN_FLOOR)}
        lines = {n: xy for n, xy in lines.items() if xy[0]}
        if lines:
            todo.append((model, ser, lines))
    if not todo:
        return None
    fig, grid = lay.panels(len(todo))
    ref_label = st.label(reference)
    any_oom = False
    for (model, ser, lines), (ax,) in zip(todo, grid):
        lay.reference_line(ax, reference)
        has_oom = lay.mark_ooms(ax, {n: ser[n].batches("oom") for n in lines})
        any_oom |= has_oom
        ends = []
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, gid=name, **st.style(name).kwargs())
            ends.append((ys[-1], xs[-1], name))
        top = max(max(top, 1.0) for _, ys in lines.values() for top in ys)
        ax.set_ylim(0, top / (lay.OOM_STRIP if has_oom else 0.9))
        _label_ends(ax, ends, top)
        lay.log2_batch_axis(ax, [b for s in ser.values() for b in s.rows])
        ax.set_ylabel(f"selection peak ÷ {ref_label} peak")
        lay.model_title(ax, model, rows)
    lay.title(fig, f"Peak memory of each selector relative to {ref_label}", rows)
    lay.legend(fig, [g[0] for g in grid], [lay.oom_handle()] if any_oom else [])
    return fig


def _label_ends(ax, ends, span: float) -> None:
    """Write the last ratio of each line next to it, skipping labels that would collide."""
    placed: list[float] = []
    for y, x, name in sorted(ends, reverse=True):
        # Only what costs more than the reference is labelled: near or below 1x the dashed line says it.
        if y < 1.1 or any(abs(y - p) < 0.07 * span for p in placed):
            continue
        placed.append(y)
        ax.annotate(f"{y:.0f}×" if y >= 20 else f"{y:.1f}×", (x, y), xytext=(4, 0), textcoords="offset points",
                    va="center",
                    fontsize=6.5, color=st.style(name).color)


def memory_vs_params(rows: Sequence[Result], *, batch: int | None = None) -> Figure | None:
    """Peak memory vs model size (``params_total``) at one batch size, a line per series, and the device's memory.

    Args:
        rows: Rows of one (device, dtype) group.
        batch: The batch size (default: the largest measured for every model).

    Returns:
        The figure, or None with fewer than two models of known size at that batch.
    """
    sized = [m for m in models(rows) if any(r.params_total for r in rows if r.model == m)]
    if batch is None:
        per_model = [{r.batch_size for r in rows if r.model == m} for m in sized]
        common = set.intersection(*per_model) if per_model else set()
        batch = max(common, default=None)
    at = [r for r in rows if r.batch_size == batch and r.model in sized]
    sized = [m for m in sized if any(r.model == m for r in at)]
    if batch is None or len(sized) < 2:
        return None
    params = {m: max(r.params_total or 0 for r in rows if r.model == m) for m in sized}
    memory_line, div, unit = memory_scale(at, device_memory_bytes(rows))
    fig, ((ax,),) = lay.panels(1)
    per_series: dict[str, list[tuple[int, Result]]] = {}
    for m in sized:
        for name, s in series(at, m).items():
            per_series.setdefault(name, []).append((params[m], s.rows[batch]))
    top = 0.0
    ooms = lay.mark_ooms(ax, {n: [p for p, r in per_series[n] if r.status == "oom"]
                              for n in sort_names(per_series)})
    for name in sort_names(per_series):
        pts = sorted((p, peak(r)) for p, r in per_series[name] if r.status == "ok" and peak(r) is not None)
        if pts:
            ax.plot([p for p, _ in pts], [v / div for _, v in pts], gid=name, **st.style(name).kwargs())
            top = max(top, max(v for _, v in pts) / div)
    top = max(top, _device_memory_line(ax, memory_line, div))
    ax.set_xscale("log")
    ticks = sorted(params.values())
    labels = [f"{lay.fmt_params(p)}\n{_short(m)}" for p, m in sorted((params[m], m) for m in sized)]
    crowded = any(b / a < 3.0 for a, b in zip(ticks, ticks[1:]) if a)  # labels would touch on a log axis
    ax.set_xticks(ticks, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.xaxis.set_minor_locator(lay.NullLocator())
    ax.set_xlim(ticks[0] / 1.6, ticks[-1] * 1.6)
    ax.set_ylim(0, (top or 1) / (lay.OOM_STRIP if ooms else 0.95))
    ax.set_xlabel("model parameters")
    ax.set_ylabel(f"peak memory ({unit})")
    ax.set_title(f"batch size {batch}")
    lay.title(fig, "Peak memory vs model size", rows)
    lay.legend(fig, [ax], [lay.oom_handle()] if ooms else [])
    return fig


def _short(model: str) -> str:
    """A timm name without its patch and resolution suffixes, to fit under a tick."""
    return re.sub(r"_patch\d+(_\d+)?$|_\d+$", "", model)
