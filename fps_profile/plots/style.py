"""One look for every figure: a colour and marker per series, fonts sized for a paper column.

A series (:mod:`fps_profile.analysis.series`) is a selector's selection (``"fps"``,
``"gps"``, ...), a reference (``"floor"``, the inference forward; ``"train:full"``, a full
fine-tuning step; ``"train:floor"``) or a sparse step (``"train:<selector>"``). The same
name gets the same colour and marker in every figure. Colours are the Okabe-Ito palette (safe for
colour-blind readers and in greyscale print, thanks to the distinct markers).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from fps_profile.analysis.series import FLOOR, FULL, TRAIN_FLOOR

# Width of one panel: a two-column paper's column is about 3.3-3.5 in.
PANEL_W_IN = 3.4
PANEL_H_IN = 2.5

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 8,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "svg.fonttype": "none",  # text stays text in SVG (editable, searchable)
    "svg.hashsalt": "fps-profile",  # stable element ids: the same rows give the same SVG
}


@dataclass(frozen=True)
class SeriesStyle:
    """How one series is drawn."""

    color: str
    marker: str
    linestyle: str = "-"
    label: str = ""
    zorder: float = 2.0

    def kwargs(self) -> dict:
        """Keyword arguments for ``Axes.plot``."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle, "label": self.label,
                "zorder": self.zorder}


_KNOWN = {
    # Dashed and on top: where a selector sits at the floor (FPS often does), both stay visible.
    FLOOR: SeriesStyle("#7f7f7f", "", "--", "inference floor", zorder=2.5),
    FULL: SeriesStyle("#000000", "*", ":", "full fine-tuning"),
    TRAIN_FLOOR: SeriesStyle("#4d4d4d", "", "-.", "train floor (gradients dropped)", zorder=2.5),
    "fps": SeriesStyle("#0072B2", "o", "-", "FPS"),
    "gps": SeriesStyle("#D55E00", "s", "-", "GPS"),
    "magnitude": SeriesStyle("#009E73", "^", "-", "magnitude"),
    "random": SeriesStyle("#CC79A7", "v", "-", "random"),
    "wanda": SeriesStyle("#E69F00", "D", "-", "Wanda"),
    "snip": SeriesStyle("#56B4E9", "P", "-", "SNIP"),
    "gd-fps": SeriesStyle("#0072B2", "X", "--", "GD-FPS"),
}
_SPARE_COLORS = ("#8c564b", "#bcbd22", "#17becf", "#9467bd", "#e377c2", "#2ca02c", "#1f77b4", "#ff7f0e")
_SPARE_MARKERS = ("h", "X", "p", "<", ">", "d", "8", "H")


def style(name: str) -> SeriesStyle:
    """The style of series ``name``; an unknown selector gets a stable one derived from its name."""
    if name in _KNOWN:
        return _KNOWN[name]
    h = zlib.crc32(name.encode())
    return SeriesStyle(_SPARE_COLORS[h % len(_SPARE_COLORS)], _SPARE_MARKERS[(h // 8) % len(_SPARE_MARKERS)],
                       "-", name)


def label(name: str) -> str:
    """The legend and table text of series ``name``: ``"FPS"``, ``"sparse step (FPS mask)"``, ..."""
    if name.startswith("train:") and name not in _KNOWN:
        return f"sparse step ({style(name[6:]).label} mask)"
    return style(name).label
