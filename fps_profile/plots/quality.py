"""Figures of what a selection is worth (``finetune`` rows, :mod:`fps_profile.analysis.quality`).

* :func:`accuracy_vs_memory` - the memory-accuracy frontier: held-out accuracy (mean over
  seeds, bars: sample std) against the peak memory of the selection that made the mask, a
  marker per budget, a line per selector through its budgets; the baselines (full
  fine-tuning, head only, frozen) as horizontal lines with their spread shaded, since they
  select nothing. Up and to the left is better.
* :func:`accuracy_vs_fraction` - the same accuracies against the trainable fraction of the
  parameters (log), full fine-tuning and the head-only probe as points where they sit, the
  frozen model as a line.

One panel per group (model, data, weights, steps ...); elements carry ``gid`` s
(``points:<series>``, ``baseline:<name>``) so tests can read the plotted data back.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from fps_profile.analysis.quality import BASELINES, FROZEN, FULL, HEAD, Group, Point, chance, points
from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.rows.result import Result
from fps_profile.units import bytes_scale

BASELINE_STYLES = {
    FULL: st.SeriesStyle("#000000", "*", "-", "full fine-tuning", zorder=1.5),
    HEAD: st.SeriesStyle("#555555", "X", "--", "head only (linear probe)", zorder=1.5),
    FROZEN: st.SeriesStyle("#999999", "", ":", "frozen model", zorder=1.5),
}
CHANCE_COLOR = "#bbbbbb"


def _style(series: str) -> st.SeriesStyle:
    name = series.split(" ")[0]
    return BASELINE_STYLES[name] if name in BASELINE_STYLES else st.style(series)


def _selectors(ps: list[Point]) -> dict[tuple[str, float | None], list[Point]]:
    """Each selector's points (its budgets) by ``(series, learning rate)``."""
    out: dict[tuple, list[Point]] = {}
    for p in ps:
        if not p.baseline and p.accuracy is not None:
            out.setdefault((p.series, p.lr), []).append(p)
    return out


def _labelled(s: st.SeriesStyle, lr: float | None, ps: list[Point]) -> st.SeriesStyle:
    """``s`` with its learning rate in the label where the panel has several."""
    if len({p.lr for p in ps if p.lr}) < 2 or not lr:
        return s
    return st.SeriesStyle(s.color, s.marker, s.linestyle, f"{s.label} (lr {lr:g})", s.zorder)


def _band(ax, p: Point, ps: list[Point]) -> None:
    """A baseline as a horizontal line at its mean, its sample std shaded."""
    s = _labelled(_style(p.series), p.lr, ps)
    y, sd = 100 * p.accuracy, 100 * (p.accuracy_std or 0)
    ax.axhline(y, color=s.color, linestyle=s.linestyle, linewidth=1.0, label=s.label, gid=f"baseline:{p.series}",
               zorder=s.zorder)
    if sd:
        ax.axhspan(y - sd, y + sd, color=s.color, alpha=0.08, linewidth=0)


def _chance(ax, ps: list[Point]) -> None:
    c = chance([r for p in ps for r in p.rows])
    if c:
        ax.axhline(100 * c, color=CHANCE_COLOR, linewidth=0.8, linestyle=(0, (1, 3)), label="chance",
                   gid="chance", zorder=1)


def _line(ax, xs, ys, errs, s: st.SeriesStyle, gid: str, **kwargs) -> None:
    """Points (a line through them) with their std as error bars; the line carries the label and ``gid``."""
    ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=s.color, capsize=2, elinewidth=0.8, zorder=s.zorder)
    ax.plot(xs, ys, **{**s.kwargs(), **kwargs}, gid=gid)


def _budget_labels(ax, xs, ys, budgets, color) -> None:
    for x, y, b in zip(xs, ys, budgets):
        if b:
            ax.annotate(b.replace("fraction=", "f="), (x, y), xytext=(3, -1), textcoords="offset points",
                        fontsize=5, color=color)


def _frame(ps_by_group: dict[Group, list[Point]]):
    groups = [g for g, ps in ps_by_group.items() if any(p.accuracy is not None for p in ps)]
    return groups, lay.panels(len(groups))


def accuracy_vs_memory(rows: Sequence[Result]) -> Figure | None:
    """The memory-accuracy frontier (see the module docstring); None without finetune rows with a selection peak."""
    by_group = points(rows)
    by_group = {g: ps for g, ps in by_group.items() if any(p.select_peak for p in ps)}
    if not by_group:
        return None
    groups, (fig, grid) = _frame(by_group)
    for g, (ax,) in zip(groups, grid):
        ps = by_group[g]
        peak = max(p.select_peak or 0 for p in ps)
        div, unit = bytes_scale(peak)
        for (series, lr), mine in _selectors(ps).items():
            mine = [p for p in mine if p.select_peak]
            s = _labelled(_style(series), lr, ps)
            xs, ys = [p.select_peak / div for p in mine], [100 * p.accuracy for p in mine]
            _line(ax, xs, ys, [100 * (p.accuracy_std or 0) for p in mine], s, f"points:{series}")
            _budget_labels(ax, xs, ys, [p.budget for p in mine], s.color)
        for p in ps:
            if p.baseline and p.accuracy is not None:
                _band(ax, p, ps)
        _chance(ax, ps)
        lay.log_axis(ax, lambda v: f"{v:g}", "x")
        ax.set_xlabel(f"peak memory of the selection ({unit})")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(g.describe(), fontsize=6)
    lay.legend(fig, [a[0] for a in grid])
    fig.suptitle("What a selection is worth: accuracy after sparse fine-tuning vs the selection's peak memory\n"
                 "(mean over seeds, bars and bands: sample std; up and left is better)")
    return fig


def accuracy_vs_fraction(rows: Sequence[Result]) -> Figure | None:
    """Accuracy against the trainable fraction (see the module docstring); None without finetune rows."""
    by_group = {g: ps for g, ps in points(rows).items() if any(p.accuracy is not None for p in ps)}
    if not by_group:
        return None
    groups, (fig, grid) = _frame(by_group)
    for g, (ax,) in zip(groups, grid):
        ps = by_group[g]
        for (series, lr), mine in _selectors(ps).items():
            mine = [p for p in mine if p.trainable_fraction]
            s = _labelled(_style(series), lr, ps)
            xs, ys = [100 * p.trainable_fraction for p in mine], [100 * p.accuracy for p in mine]
            _line(ax, xs, ys, [100 * (p.accuracy_std or 0) for p in mine], s, f"points:{series}")
        for p in ps:
            if not p.baseline or p.accuracy is None:
                continue
            if p.series.split(" ")[0] == FROZEN or not p.trainable_fraction:
                _band(ax, p, ps)
                continue
            s = _labelled(_style(p.series), p.lr, ps)
            _line(ax, [100 * p.trainable_fraction], [100 * p.accuracy], [100 * (p.accuracy_std or 0)], s,
                  f"baseline:{p.series}", markersize=7, linestyle="none")
        _chance(ax, ps)
        lay.log_axis(ax, lambda v: f"{v:g}%", "x")
        ax.set_xlabel("trainable parameters (% of the model)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(g.describe(), fontsize=6)
    lay.legend(fig, [a[0] for a in grid])
    fig.suptitle("Accuracy after fine-tuning vs the share of parameters trained (mean over seeds, bars: std)")
    return fig


__all__ = ["BASELINES", "BASELINE_STYLES", "accuracy_vs_fraction", "accuracy_vs_memory"]
