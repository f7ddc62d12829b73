"""The memory-time frontier figure: peak memory against selection time on N images, per selector and knob setting.

One figure per (device, dtype[, budget]) group of :func:`fps_profile.analysis.frontier.panels`, one panel per model.
Every ``ok`` selection row is a hollow marker (colour: the selector; shape: its knobs; ``gid``
``"points:<selector>:<knobs>"``), each selector's lower-left envelope a step line through its points, filled
(``gid`` ``"envelope:<selector>"``; its last x is the panel's right edge), out-of-memory rows crosses at the
top (at their selector's time with the same knobs when they have none), and the device's memory a line with
the band above it shaded.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fps_profile.analysis.frontier import DEFAULT_IMAGES, Panel, Setting, envelope, selection_time, setting_of
from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.analysis.series import device_memory_bytes
from fps_profile.plots.memory import DEVICE_MEMORY_COLOR
from fps_profile.units import bytes_scale, fmt_bytes

# Marker of a knob combination (mixed precision, checkpointing, micro-batches); micro-batch sizes share one.
KNOB_MARKERS = {(False, False, False): "o", (True, False, False): "^", (False, True, False): "s",
                (False, False, True): "D", (True, True, False): "v", (True, False, True): "<",
                (False, True, True): ">", (True, True, True): "*"}
KNOB_NAMES = {(False, False, False): "plain", (True, False, False): "amp", (False, True, False): "checkpointing",
              (False, False, True): "micro-batches"}
TIME_LABELS = {"wall": "median wall time", "floor": "FLOP floor, a lower bound"}


def knob_class(s: Setting) -> tuple[bool, bool, bool]:
    return bool(s.amp), s.checkpointing, bool(s.micro_batch)


def knob_name(kc: tuple[bool, bool, bool]) -> str:
    return KNOB_NAMES.get(kc) or " + ".join(KNOB_NAMES[tuple(i == j for j in range(3))] for i in range(3) if kc[i])


def frontier_figure(panels: Sequence[Panel], images: int = DEFAULT_IMAGES) -> Figure | None:
    """The frontier of one (device, dtype[, budget]) group: a panel per model with at least one point.

    Args:
        panels: Panels of one group (:func:`fps_profile.analysis.frontier.panels`).
        images: N of "selection time for N images" (the x axis).

    Returns:
        The figure, or None when no panel has a point.
    """
    panels = [p for p in panels if p.points]
    if not panels:
        return None
    rows = [r for p in panels for r in [q.row for q in p.points] + p.ooms + p.no_time]
    memory = device_memory_bytes(rows)
    largest = max(q.peak_bytes for p in panels for q in p.points)
    div, unit = bytes_scale(max(largest, memory or 0))
    from_env = any(isinstance(r.env, dict) and r.env.get("device_memory_bytes") for r in rows)
    fig, grid = lay.panels(len(panels))
    classes, any_oom = set(), False
    for panel, (ax,) in zip(panels, grid):
        for sel in panel.selectors():
            style = st.style(sel)
            mine = [q for q in panel.points if q.selector == sel]
            by_class: dict[tuple, list] = {}
            for q in mine:
                by_class.setdefault(knob_class(q.setting), []).append(q)
            for kc, qs in sorted(by_class.items()):
                classes.add(kc)
                ax.plot([q.time_s for q in qs], [q.peak_bytes / div for q in qs], linestyle="none",
                        marker=KNOB_MARKERS[kc], color=style.color, markerfacecolor="none", alpha=0.8,
                        label="_point", gid=f"points:{sel}:{knob_name(kc)}")
            env = envelope(mine)
            # Lower-left envelope: from each of its points rightwards, the lowest peak reachable in that time;
            # the last one holds to the panel's right edge.
            right = max(q.time_s for q in panel.points) * 1.15
            if env:
                ax.plot([q.time_s for q in env] + [right], [q.peak_bytes / div for q in env + env[-1:]],
                        drawstyle="steps-post", color=style.color, linestyle=style.linestyle, label=style.label,
                        gid=f"envelope:{sel}", zorder=style.zorder)
            for q in env:  # its points filled
                ax.plot([q.time_s], [q.peak_bytes / div], linestyle="none", marker=KNOB_MARKERS[knob_class(q.setting)],
                        color=style.color, label="_envelope_point", zorder=style.zorder + 0.1)
        oom_xs = {sel: [t for r in panel.ooms if (r.variant or "?") == sel and (t := _oom_time(panel, r, images))]
                  for sel in panel.selectors()}
        has_oom = lay.mark_ooms(ax, {s: xs for s, xs in oom_xs.items() if xs})
        any_oom |= has_oom
        if memory:
            ax.axhline(memory / div, color=DEVICE_MEMORY_COLOR, linewidth=0.9, linestyle="-.", gid="device_memory")
        lay.seconds_axis(ax, "x")
        lay.log_axis(ax, lambda v: f"{v:g}")
        _leave_room(ax, memory / div if memory else None, has_oom)
        ax.set_xlabel(f"time to select on {images:,} images ({TIME_LABELS[panel.time_kind]})")
        ax.set_ylabel(f"peak memory ({unit})")
        lay.model_title(ax, panel.model, rows)
    extra = [Line2D([], [], linestyle="none", marker=KNOB_MARKERS[kc], color="#555555", markerfacecolor="none",
                    label=knob_name(kc)) for kc in sorted(classes, key=list(KNOB_MARKERS).index)]
    if memory:
        where = "env.device_memory_bytes" if from_env else f"{panels[0].device} datasheet"
        extra.append(Line2D([], [], color=DEVICE_MEMORY_COLOR, linestyle="-.",
                            label=f"device memory {fmt_bytes(memory)} ({where}); shaded: does not fit"))
    if any_oom:
        extra.append(lay.oom_handle())
    lay.title(fig, f"Memory-time frontier of selection on {images:,} images (lines: lower-left envelope)", rows)
    lay.legend(fig, [g[0] for g in grid], extra)
    return fig


def _oom_time(panel: Panel, row, images: int) -> float | None:
    """Where an out-of-memory row goes on the time axis: its own time, else the median of its selector's
    ``ok`` points with the same knobs (time per image hardly depends on the batch), else nowhere."""
    own = selection_time(row, images)
    if own:
        return own
    kc = knob_class(setting_of(row))
    same = [q.time_s for q in panel.points if q.selector == (row.variant or "?") and knob_class(q.setting) == kc]
    return statistics.median(same) if same else None


def _leave_room(ax, memory: float | None, has_oom: bool) -> None:
    """Show the device memory line and band, and keep the data below the out-of-memory strip on a log axis."""
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if memory:
        lo, hi = min(lo, memory), max(hi, memory)
    lo, hi = lo / 1.3, hi * 1.3
    if has_oom:  # the data's top at OOM_STRIP of the panel's (log) height
        span = math.log(hi / lo) / lay.OOM_STRIP
        hi = lo * math.exp(span)
    ax.set_ylim(lo, hi)
    if memory:
        ax.axhspan(memory, hi, color=DEVICE_MEMORY_COLOR, alpha=0.08, linewidth=0, gid="device_memory_band")
