"""Shared figure furniture: panel grids, titles naming the environment, axes, legends."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from fps_profile.plots import style as st
from fps_profile.analysis.series import FULL, ORDER
from fps_profile.analysis.series import device_memory_bytes, env_value
from fps_profile.rows.result import Result
from fps_profile.units import fmt_bytes

# Data stay below this fraction of a panel's height when it has out-of-memory marks above them.
OOM_STRIP = 0.8


def panels(n: int, *, rows_per_model: int = 1, ncols_max: int = 2) -> tuple[Figure, list[list]]:
    """A constrained-layout figure with one column of ``rows_per_model`` axes per model.

    Returns:
        The figure and, per model, its list of axes (top to bottom).
    """
    ncols = max(1, min(n, ncols_max))
    nrows = math.ceil(n / ncols) * rows_per_model
    fig = Figure(figsize=(st.PANEL_W_IN * ncols, st.PANEL_H_IN * nrows * (0.8 if rows_per_model > 1 else 1) + 0.6),
                 layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    out = []
    for i in range(n):
        r, c = divmod(i, ncols)
        out.append([grid[r * rows_per_model + j][c] for j in range(rows_per_model)])
    for i in range(n, math.ceil(n / ncols) * ncols):  # unused cells of the last row
        r, c = divmod(i, ncols)
        for j in range(rows_per_model):
            grid[r * rows_per_model + j][c].set_visible(False)
    return fig, out


def title(fig: Figure, what: str, rows: Sequence[Result]) -> None:
    """Figure title: what is plotted, the device and dtype, and the software versions."""
    name = env_value(rows, "device_name")
    if name and len(name) > 40:
        name = name[:39] + "…"
    mem = device_memory_bytes(rows)
    about = [x for x in (name, fmt_bytes(mem) if mem else None) if x]
    devices = sorted({r.device for r in rows})
    if len(devices) > 1:  # a figure over several devices: each one's name and memory are drawn in it
        where = " & ".join(devices) + f", {rows[0].dtype}"
    else:
        where = rows[0].device + (f" ({', '.join(about)})" if about else "") + f", {rows[0].dtype}"
    budgets = sorted({r.budget for r in rows if r.budget})
    if len(budgets) == 1:
        where += f", budget {budgets[0]}"
    seqs = sorted({r.seq_len for r in rows if r.seq_len})
    if len(seqs) == 1:
        where += f", {seqs[0]} tokens"
    versions = [f"{k.replace('_', '-')} {v}" for k in ("torch", "timm", "fps_profile")
                if (v := env_value(rows, k))]
    commit = env_value(rows, "git_commit")
    if commit:
        commits = commit.split(" / ")
        versions.append(f"commit {commit}" if len(commits) == 1 else f"{len(commits)} commits ({commits[0]} …)")
    narrow = fig.get_figwidth() < 1.5 * st.PANEL_W_IN
    fig.suptitle(f"{what}{chr(10) if narrow else ': '}{where}\n{' · '.join(versions)}")


def model_title(ax, model: str, rows: Sequence[Result]) -> None:
    params = max((r.params_total or 0 for r in rows if r.model == model), default=0)
    ax.set_title(f"{model} ({fmt_params(params)} params)" if params else model)
    ax.set_gid(model)


def fmt_params(n: float) -> str:
    """``5717416 -> "5.7M"``."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def log2_batch_axis(ax, batches: Sequence[int], *, label: bool = True) -> None:
    """A log2 x axis with a tick at every batch size measured."""
    batches = sorted(set(batches))
    ax.set_xscale("log", base=2)
    if batches:
        ax.set_xticks(batches, [str(b) for b in batches])
        lo, hi = batches[0], batches[-1]
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if label:
        ax.set_xlabel("batch size")


def seconds_axis(ax, axis: str = "y") -> None:
    """A log axis (``"y"`` or ``"x"``) of seconds labelled in us / ms / s (call after plotting)."""
    log_axis(ax, fmt_tick_seconds, axis)


def log_axis(ax, fmt, axis: str = "y") -> None:
    """A log axis (``"y"`` or ``"x"``) labelled by ``fmt(value)``: 1-2-5 ticks within two decades, else decades."""
    from matplotlib.ticker import LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    lo, hi = (ax.dataLim.x0, ax.dataLim.x1) if axis == "x" else (ax.dataLim.y0, ax.dataLim.y1)
    narrow = lo > 0 and math.isfinite(lo) and math.isfinite(hi) and hi / lo < 100
    which = ax.xaxis if axis == "x" else ax.yaxis
    which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    which.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    which.set_minor_formatter(NullFormatter())


def fmt_tick_seconds(s: float) -> str:
    """A short tick label: ``0.5 -> "500 ms"``, ``2.0 -> "2 s"``."""
    div, unit = next(((d, u) for d, u in ((1.0, "s"), (1e-3, "ms")) if s >= d), (1e-6, "us"))
    return f"{s / div:.3g} {unit}"


def ratio_axis(ax) -> None:
    """A log y axis of ratios labelled ``0.5×``, ``1×``, ``2×`` (call after plotting)."""
    log_axis(ax, lambda v: f"{v:g}×")


def reference_line(ax, reference: str) -> None:
    """The dashed ``reference = 1×`` line of a ratio panel, in the reference's colour."""
    ax.axhline(1.0, color=st.style(reference).color, linewidth=0.9, linestyle="--",
               label=f"{st.label(reference)} = 1×", gid=reference)


def mark_ooms(ax, ooms: dict[str, Sequence[float]]) -> bool:
    """Out-of-memory crosses, one series at a time, in the strip above ``OOM_STRIP`` at the top of the panel.

    Crosses of several series at the same x are stacked downwards so none hides another.

    Args:
        ax: The panel.
        ooms: Series name -> x positions (batch sizes, or model sizes) that ran out of memory.

    Returns:
        Whether any cross was drawn.
    """
    stack: dict[float, int] = {}
    placed = {}
    for name, xs in ooms.items():
        placed[name] = [(x, stack.setdefault(x, 0)) for x in xs]
        for x in xs:
            stack[x] += 1
    if not stack:
        return False
    step = min(0.045, (0.97 - OOM_STRIP - 0.03) / max(1, max(stack.values()) - 1))
    for name, pts in placed.items():
        if pts:
            s = st.style(name)
            ax.plot([x for x, _ in pts], [0.97 - step * k for _, k in pts], transform=ax.get_xaxis_transform(),
                    linestyle="none", marker="x", color=s.color, markersize=5, markeredgewidth=1.4, clip_on=False,
                    gid=f"oom:{name}")
    return True


def oom_handle() -> Line2D:
    """The legend entry of the out-of-memory crosses."""
    return Line2D([], [], linestyle="none", marker="x", color="black", markeredgewidth=1.4, label="out of memory")


def legend(fig: Figure, axes_list: Sequence, extra: Sequence = ()) -> None:
    """One legend for the whole figure, below the panels, in series order, without duplicates."""
    seen: dict[str, object] = {}
    for ax in axes_list:
        for line in ax.get_lines():
            lab = line.get_label()
            if lab and not lab.startswith("_") and lab not in seen:
                seen[lab] = line
    order = {st.label(n): i for i, n in enumerate(ORDER)}
    labels = sorted(seen, key=lambda lab: (order.get(lab, order[st.label(FULL)] - 0.5), lab))
    handles = [seen[lab] for lab in labels] + list(extra)
    labels += [h.get_label() for h in extra]
    if handles:
        per_row = 5 if fig.get_figwidth() > 1.5 * st.PANEL_W_IN else 3
        nrows = math.ceil(len(handles) / per_row)
        fig.legend(handles, labels, loc="outside lower center", ncols=math.ceil(len(handles) / nrows),
                   frameon=False)
