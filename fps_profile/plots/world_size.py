"""Per-rank peak memory vs world size, for sharded rows (``world_size`` above 1), with each card's memory.

One panel per model measured at two or more world sizes (the rows without FSDP2 are world
size 1), a line per series (each selector's selection, the floor, full and sparse
fine-tuning steps, as ``gid``). Unlike the other memory figures it is drawn over every
device of a dtype at once: the predicted peak of a cell is a property of the model, the
cards' memory (one labelled horizontal line each, ``gid`` ``"device_memory:<device>"``)
says where it fits. Devices whose peaks agree at every world size they share (``sim:h100``
and ``sim:h200`` do) give one line; otherwise each device has its own (``gid``
``"<series>@<device>"``).

The line goes through every known peak, an out-of-memory cell's predicted peak too; a
cell out of memory on every device that measured it is crossed (``gid`` ``"oom:<series>"``),
one without a peak is a cross at the top of the panel. A cell run with ``--offload`` is
a single hollow point (``gid`` ``"<series> +offload-<where>"``), its host memory beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.plots.memory import DEVICE_MEMORY_COLOR, memory_line
from fps_profile.analysis.series import dedupe, device_label, device_memory_bytes, models, peak, sort_names
from fps_profile.rows.label import series as series_name
from fps_profile.rows.result import Result
from fps_profile.units import bytes_scale, fmt_bytes

# Card lines from the smallest memory up; the first is the colour every other figure gives the device.
CARD_COLORS = (DEVICE_MEMORY_COLOR, "#5e3c99", "#8c510a", "#01665e")
CARD_STYLES = ("-.", "--", ":", (0, (5, 1, 1, 1)))
# Where devices disagree, the same series on each device: the first device solid, the next ones so.
DEVICE_LINESTYLES = ("-", "--", ":", "-.")


def world_size(r: Result) -> int:
    """The row's number of ranks (1 for a row without FSDP2)."""
    return r.world_size or 1


def world_size_groups(rows: Sequence[Result]) -> dict[tuple[str, str | None], list[Result]]:
    """Rows by ``(dtype, budget)`` over every device, for dtypes with rows at world sizes above 1.

    The budget is None unless the sharded selections of a dtype hold several budgets; then each
    is its own group, with the budget-less rows (floor, full fine-tuning) in each.
    """
    rows = dedupe(rows)
    out: dict[tuple[str, str | None], list[Result]] = {}
    for dtype in sorted({r.dtype for r in rows if world_size(r) > 1}):
        of_dtype = [r for r in rows if r.dtype == dtype]
        budgets = sorted({r.budget for r in of_dtype if r.budget and world_size(r) > 1})
        if len(budgets) <= 1:
            out[(dtype, None)] = of_dtype
        for b in budgets if len(budgets) > 1 else ():
            out[(dtype, b)] = [r for r in of_dtype if r.budget in (b, None)]
    return out


def panel_rows(rows: Sequence[Result], model: str) -> list[Result]:
    """``model``'s rows at the sequence length and batch size measured at the most world sizes
    (ties: the smallest batch), or [] when no setting has two world sizes, one of them sharded."""
    counts: dict[tuple, set[int]] = {}
    for r in rows:
        if r.model == model and not r.offload and r.status in ("ok", "oom"):
            counts.setdefault((r.seq_len or 0, r.batch_size), set()).add(world_size(r))
    good = [(len(w), -b, s) for (s, b), w in counts.items() if len(w) >= 2 and max(w) > 1]
    if not good:
        return []
    _, b, s = max(good)
    return [r for r in rows if r.model == model and (r.seq_len or 0) == s and r.batch_size == -b]


def _points(rows: Sequence[Result]) -> dict[str, dict[int, list[Result]]]:
    """Series name (world size and offload left out) -> world size -> the rows of every device; only the
    series measured sharded or offloaded (a selector measured on one process alone is not on the figure)."""
    out: dict[str, dict[int, list[Result]]] = {}
    for r in rows:
        if r.status not in ("ok", "oom"):
            continue
        name = series_name(dataclasses.replace(r, world_size=1, offload=None))
        if r.offload:
            name += f" +offload-{r.offload}"
        out.setdefault(name, {}).setdefault(world_size(r), []).append(r)
    return {n: by_ws for n, by_ws in out.items() if "+offload-" in n or max(by_ws) > 1}


def lines(rows: Sequence[Result]) -> dict[str, dict[int, list[Result]]]:
    """The panel's lines: one per series, or one per device (``"<series>@<device>"``) where devices disagree."""
    out = {}
    for name, by_ws in _points(rows).items():
        agree = all(len({peak(r) for r in rs if peak(r) is not None}) <= 1 for rs in by_ws.values())
        if agree:
            out[name] = by_ws
            continue
        for dev in sorted({device_label(r) for rs in by_ws.values() for r in rs}):
            mine = {ws: [r for r in rs if device_label(r) == dev] for ws, rs in by_ws.items()}
            out[f"{name}@{dev}"] = {ws: rs for ws, rs in mine.items() if rs}
    return out


def _style(name: str, nth: int) -> dict:
    """``Axes.plot`` keywords of line ``name``, the ``nth`` of its series: the series' style, a label naming
    offload and device, and a line style per device where devices disagree."""
    base, _, dev = name.partition("@")
    core, _, where = base.partition(" +offload-")
    kw = st.style(core).kwargs()
    kw["label"] = (st.label(core) or core) + (f", --offload {where}" if where else "") + (f" ({dev})" if dev else "")
    if dev:
        kw["linestyle"] = DEVICE_LINESTYLES[nth % len(DEVICE_LINESTYLES)]
    return kw


def cards(rows: Sequence[Result]) -> dict[str, int]:
    """Each device's memory in bytes (devices whose memory is unknown left out), smallest first."""
    found = {}
    for dev in {device_label(r) for r in rows}:
        m = device_memory_bytes([r for r in rows if device_label(r) == dev])
        if m:
            found[dev] = m
    return dict(sorted(found.items(), key=lambda kv: (kv[1], kv[0])))


def memory_vs_world_size(rows: Sequence[Result]) -> Figure | None:
    """Per-rank peak memory vs world size, one panel per model, every device's memory drawn.

    Args:
        rows: Rows of one dtype (and budget), any devices; rows without FSDP2 are world size 1.

    Returns:
        The figure, or None when no model has rows at two world sizes, one of them above 1.
    """
    todo = [(m, at, lines(at)) for m in models(rows) if (at := panel_rows(rows, m))]
    if not todo:
        return None
    used = [r for _, at, _ in todo for r in at]
    card = cards(used)
    largest = max([peak(r) or 0 for r in used] + list(card.values()))
    div, unit = bytes_scale(largest)
    fig, grid = lay.panels(len(todo))
    any_oom = False
    for (model, at, lns), (ax,) in zip(todo, grid):
        any_oom |= _draw_panel(ax, lns, card, div)
        b = at[0].batch_size
        seq = f" × {at[0].seq_len} tokens" if at[0].seq_len else ""
        ax.set_xlabel(f"world size (ranks), batch {b}{seq} per rank")
        ax.set_ylabel(f"peak memory per rank ({unit})")
        lay.model_title(ax, model, rows)
    lay.title(fig, "Per-rank peak memory vs world size", used)
    extra = [Line2D([], [], color=CARD_COLORS[i % len(CARD_COLORS)], linewidth=0.9,
                    linestyle=CARD_STYLES[i % len(CARD_STYLES)], label=f"{dev} memory {fmt_bytes(m)}")
             for i, (dev, m) in enumerate(card.items())]
    if any("+offload-" in n for *_, ls in todo for n in ls):
        extra.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", color="black",
                            label="--offload: device peak (host beside it)"))
    if any_oom:
        extra.append(lay.oom_handle())
        extra[-1].set_label("out of memory on every card measured")
    lay.legend(fig, [g[0] for g in grid], extra)
    return fig


def _draw_panel(ax, lns: dict[str, dict[int, list[Result]]], card: dict[str, int], div: int) -> bool:
    """One model's lines, offload points, out-of-memory crosses and card lines; True if any cell is out of memory."""
    no_peak = {n: [ws for ws, rs in by_ws.items() if all(r.status == "oom" for r in rs)
                   and all(peak(r) is None for r in rs)] for n, by_ws in lns.items()}
    has_oom = lay.mark_ooms(ax, {n: xs for n, xs in no_peak.items() if xs})
    values = []
    nth: dict[str, int] = {}
    for name in sort_names(lns):
        by_ws = lns[name]
        nth[name.split("@")[0]] = nth.get(name.split("@")[0], -1) + 1
        pts = sorted((ws, peak(next(r for r in rs if peak(r) is not None)) / div, rs)
                     for ws, rs in by_ws.items() if any(peak(r) is not None for r in rs))
        if not pts:
            continue
        kw = _style(name, nth[name.split("@")[0]])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        values += ys
        if "+offload-" in name:
            ax.plot(xs, ys, gid=name, **(kw | {"linestyle": "none", "markerfacecolor": "none",
                                               "marker": kw["marker"] or "o"}))
            for x, y, rs in pts:
                host = max((r.host_peak_bytes or 0 for r in rs), default=0)
                if host:
                    ax.annotate(f"host {fmt_bytes(host)}", (x, y), xytext=(5, -2), textcoords="offset points",
                                fontsize=6, color=kw["color"], va="top")
            continue
        ax.plot(xs, ys, gid=name, **kw)
        crossed = [(x, y) for x, y, rs in pts if all(r.status == "oom" for r in rs)]
        if crossed:
            has_oom = True
            ax.plot([x for x, _ in crossed], [y for _, y in crossed], linestyle="none", marker="x",
                    color=kw["color"], markersize=7, markeredgewidth=1.4, zorder=3, gid=f"oom:{name}")
    for i, (dev, memory) in enumerate(card.items()):
        memory_line(ax, memory, div, gid=f"device_memory:{dev}",
                    color=CARD_COLORS[i % len(CARD_COLORS)], linestyle=CARD_STYLES[i % len(CARD_STYLES)])
        values.append(memory / div)
    _log2_axes(ax, [ws for by_ws in lns.values() for ws in by_ws], values)
    return has_oom


def _log2_axes(ax, sizes: Sequence[int], values: Sequence[float]) -> None:
    """A log2 x axis ticked at every world size and a log2 y axis ticked at powers of two."""
    lay.log2_batch_axis(ax, sizes, label=False)
    lo, hi = min(values), max(values)
    ax.set_yscale("log", base=2)
    ax.set_ylim(lo / 1.5, hi * 1.6)  # room above the top card's label and below the lowest point
    ticks = [2.0**e for e in range(-10, 20) if lo / 1.5 <= 2.0**e <= hi * 1.6]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
