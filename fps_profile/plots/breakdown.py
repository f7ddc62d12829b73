"""What each peak is made of: a stacked bar per selector (and reference) and phase of the run.

For one batch size per model, every row with a breakdown gives one bar per
phase of its run (``peak_breakdown_by_phase``: forward, backward, scoring,
optimizer), split into the breakdown's categories. Each bar segment carries
``gid = "<series>:<phase>:<category>"`` so tests can read the figure back.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fps_profile.plots import _layout as lay
from fps_profile.plots import style as st
from fps_profile.analysis.series import models, series
from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES, PEAK_PHASES
from fps_profile.rows.result import Result
from fps_profile.units import bytes_scale

# Okabe-Ito for what the study is about, greys for what every run holds anyway.
CATEGORY_COLORS = {
    "weights": "#4d4d4d", "buffers": "#878787", "inputs": "#bababa", "gradients": "#D55E00",
    "optimizer_state": "#CC79A7", "mask": "#009E73", "activations": "#0072B2", "temporaries": "#56B4E9",
    "workspace": "#E69F00", "allocator_slack": "#F0E442",
}


def breakdown_batch(rows: Sequence[Result], model: str) -> int | None:
    """The largest batch size at which a row of ``model`` has a breakdown."""
    return max((r.batch_size for r in rows if r.model == model and r.status == "ok" and r.peak_breakdown_bytes),
               default=None)


def bars(rows: Sequence[Result], model: str, batch: int) -> list[tuple[str, str, dict[str, int], bool]]:
    """``(series, phase, breakdown, is_the_row_peak)`` per bar, in drawing order (top to bottom)."""
    out = []
    for name, s in series(rows, model, sparse=True).items():
        r = s.rows.get(batch)
        if r is None or r.status != "ok" or not r.peak_breakdown_bytes:
            continue
        phases = r.peak_breakdown_by_phase or {r.peak_phase or "peak": r.peak_breakdown_bytes}
        rank = {p: i for i, p in enumerate(PEAK_PHASES)}
        for ph in sorted(phases, key=lambda p: rank.get(p, len(rank))):
            out.append((name, ph, phases[ph], ph == r.peak_phase))
    return out


def breakdown_bars(rows: Sequence[Result]) -> Figure | None:
    """Stacked horizontal bars of each row's phase peaks, one panel per model (None without breakdowns)."""
    panels = []
    for model in models(rows):
        batch = breakdown_batch(rows, model)
        if batch is not None:
            panels.append((model, batch, bars(rows, model, batch)))
    if not panels:
        return None
    heights = [0.7 + 0.17 * len(b) for _, _, b in panels]
    fig = Figure(figsize=(2 * st.PANEL_W_IN, sum(heights) + 1.0), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    used: list[str] = []
    for ax, (model, batch, items) in zip(axes, panels):
        div, unit = bytes_scale(max(sum(b.values()) for _, _, b, _ in items))
        for y, (name, ph, bd, _) in enumerate(items):
            left = 0.0
            for cat in BREAKDOWN_CATEGORIES:
                value = bd.get(cat, 0) / div
                if value <= 0:
                    continue
                ax.barh(y, value, left=left, height=0.75, color=CATEGORY_COLORS[cat], gid=f"{name}:{ph}:{cat}",
                        edgecolor="white", linewidth=0.3)
                left += value
                if cat not in used:
                    used.append(cat)
        ax.set_yticks(range(len(items)), [f"{st.label(n)} · {ph}{' *' if p else ''}"
                                          for n, ph, _, p in items])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"bytes live at the phase's peak ({unit}); * the row's peak")
        lay.model_title(ax, model, rows)
        ax.set_title(f"{ax.get_title()}, batch {batch}")
    lay.title(fig, "What each peak is made of", rows)
    order = [c for c in BREAKDOWN_CATEGORIES if c in used]
    fig.legend([Patch(color=CATEGORY_COLORS[c]) for c in order], [c.replace("_", " ") for c in order],
               loc="outside lower center", ncols=min(5, len(order)), frameon=False)
    return fig
