"""Time figures: selection time vs batch size with its ratio to a reference, and the compute floor.

Same conventions as :mod:`fps_profile.plots.memory`: one (device, dtype)
group in, a Figure (or None) out, series names as line ``gid``.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.analysis.series import FLOOR, FULL, TRAIN_FLOOR
from fps_profile.analysis.series import models, ratios, series
from fps_profile.rows.result import Result


def wall(r: Result) -> float | None:
    return r.wall_time_s


def achieved(r: Result) -> float | None:
    """Fraction of the compute floor reached: ``time_floor_s / wall_time_s``."""
    return r.time_floor_s / r.wall_time_s if r.time_floor_s and r.wall_time_s else None


def time_vs_batch(rows: Sequence[Result], *, reference: str = "fps") -> Figure | None:
    """Per model: median wall time vs batch size (top) and each selector's time over the reference's (bottom).

    The bottom panels are left out when no model has the reference and another selector at a common batch.

    Returns:
        The figure, or None when no row has a measured wall time (e.g. simulated rows).
    """
    names = [m for m in models(rows) if any(r.wall_time_s for r in rows if r.model == m and r.status == "ok")]
    if not names:
        return None
    sers = {m: series(rows, m) for m in names}
    lines = {m: {n: ratios(s, ser.get(reference), wall) for n, s in ser.items()
                 if n not in (reference, FLOOR, FULL, TRAIN_FLOOR)} for m, ser in sers.items()}
    with_ratio = any(xs for per in lines.values() for xs, _ in per.values())
    fig, grid = lay.panels(len(names), rows_per_model=2 if with_ratio else 1)
    ref_label = st.label(reference)
    for model, axes in zip(names, grid):
        ser, top = sers[model], axes[0]
        batches = [b for s in ser.values() for b in s.rows]
        for name, s in ser.items():
            xs, ys = s.xy(wall)
            if xs:
                top.plot(xs, ys, gid=name, **st.style(name).kwargs())
        lay.seconds_axis(top)
        lay.log2_batch_axis(top, batches, label=not with_ratio)
        top.set_ylabel("median wall time")
        lay.model_title(top, model, rows)
        if not with_ratio:
            continue
        bottom = axes[1]
        lay.reference_line(bottom, reference)
        for name, (xs, ys) in lines[model].items():
            if xs:
                bottom.plot(xs, ys, gid=name, **st.style(name).kwargs())
        lay.ratio_axis(bottom)
        bottom.set_gid(f"{model}/ratio")
        lay.log2_batch_axis(bottom, batches)
        bottom.set_ylabel(f"time ÷ {ref_label} time")
    lay.title(fig, "Selection time vs batch size", rows)
    lay.legend(fig, [ax for g in grid for ax in g])
    return fig


def floor_fraction(rows: Sequence[Result]) -> Figure | None:
    """The compute floor: achieved fraction of it where rows have time and floor, else the floor or FLOPs.

    With measured wall times and ``time_floor_s`` the y axis is the achieved
    fraction of the floor (%); with a floor but no wall time (simulated rows)
    it is the floor itself; with FLOPs only, the FLOPs.

    Returns:
        The figure, or None when no row has FLOPs or a time floor.
    """
    ok = [r for r in rows if r.status == "ok"]
    if any(achieved(r) is not None for r in ok):
        value, what, ylabel = (lambda r: 100 * achieved(r) if achieved(r) else None,
                               "Achieved fraction of the compute floor (FLOPs ÷ peak rate)",
                               "compute floor ÷ wall time")
    elif any(r.time_floor_s for r in ok):
        value, what, ylabel = (lambda r: r.time_floor_s or None,
                               "Compute floor: FLOPs ÷ peak rate (time if compute-bound)", "time floor")
    elif any(r.flops for r in ok):
        value, what, ylabel = lambda r: r.flops / 1e9 if r.flops else None, "Floating-point operations", "GFLOP"
    else:
        return None
    names = [m for m in models(rows) if any(value(r) is not None for r in ok if r.model == m)]
    fig, grid = lay.panels(len(names))
    for model, (ax,) in zip(names, grid):
        ser = series(rows, model)
        for name, s in ser.items():
            xs, ys = s.xy(value)
            if xs:
                ax.plot(xs, ys, gid=name, **st.style(name).kwargs())
        if ylabel == "time floor":
            lay.seconds_axis(ax)
        elif ylabel == "GFLOP":
            lay.log_axis(ax, lambda v: f"{v:g}")
        else:
            ax.axhline(100.0, color="#7f7f7f", linewidth=0.8, linestyle="--", gid="compute_floor")
            lay.log_axis(ax, lambda v: f"{v:g}%")
        lay.log2_batch_axis(ax, [b for s in ser.values() for b in s.rows])
        ax.set_ylabel(ylabel)
        lay.model_title(ax, model, rows)
    lay.title(fig, what, rows)
    lay.legend(fig, [g[0] for g in grid])
    return fig
