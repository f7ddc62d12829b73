"""Figures of a results file: memory and time against batch size and model size.

:func:`plot_all` draws every figure the rows support, one set per (device,
dtype) group, and saves each as PNG and SVG. The figure functions
(:func:`memory_vs_batch`, :func:`ratio_vs_batch`, :func:`memory_vs_params`,
:func:`time_vs_batch`, :func:`floor_fraction`, :func:`breakdown_bars`, :func:`memory_vs_world_size`, drawn over
every device of a dtype) return the Figure so callers
can read the plotted data back. Figures are built on
:class:`matplotlib.figure.Figure` directly (Agg canvas), never through
``pyplot``: nothing opens a window or touches global figure state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fps_profile.errors import UserError
from fps_profile.plots.breakdown import breakdown_bars
from fps_profile.analysis.series import by_group, device_label
from fps_profile.plots.memory import memory_vs_batch, memory_vs_params, ratio_vs_batch
from fps_profile.plots.quality import accuracy_vs_fraction, accuracy_vs_memory
from fps_profile.plots.seqlen import memory_vs_seq_len
from fps_profile.plots.style import RC
from fps_profile.plots.timing import floor_fraction, time_vs_batch
from fps_profile.plots.world_size import memory_vs_world_size, world_size_groups
from fps_profile.rows.result import Result

__all__ = ["FIGURES", "FIGURE_NAMES", "QUALITY_FIGURES", "SEQ_LEN_FIGURES", "WORLD_SIZE_FIGURES", "Drawn",
           "accuracy_vs_fraction", "accuracy_vs_memory", "breakdown_bars", "draw", "floor_fraction", "memory_vs_batch",
           "memory_vs_params", "memory_vs_seq_len", "memory_vs_world_size", "plot_all", "ratio_vs_batch",
           "time_vs_batch"]


@dataclass(frozen=True)
class FigureKind:
    """One kind of figure: its file stem, what it shows (a caption) and how it is drawn."""

    name: str
    caption: str
    draw: Callable[..., object]


FIGURES: tuple[FigureKind, ...] = (
    FigureKind("memory_vs_batch", "Peak memory vs batch size: each selector's selection, the inference floor "
               "and a full fine-tuning step; crosses mark out-of-memory cells.",
               lambda rows, o: memory_vs_batch(rows)),
    FigureKind("ratio_vs_batch", "Each selector's selection peak relative to the reference selector's, "
               "vs batch size.", lambda rows, o: ratio_vs_batch(rows, reference=o["reference"])),
    FigureKind("memory_vs_params", "Peak memory vs model size (parameters) at one batch size.",
               lambda rows, o: memory_vs_params(rows, batch=o["batch"])),
    FigureKind("time_vs_batch", "Selection time vs batch size (top) and relative to the reference selector "
               "(bottom).", lambda rows, o: time_vs_batch(rows, reference=o["reference"])),
    FigureKind("floor_fraction", "Compute floor (FLOPs over the device's peak rate): the achieved fraction "
               "where wall times exist, else the floor itself.", lambda rows, o: floor_fraction(rows)),
    FigureKind("breakdown", "What each peak is made of: for each selector's selection, the floor and the "
               "fine-tuning steps, the peak of every phase of the run split into weights, gradients, "
               "optimizer state, activations and the rest (* marks the row's peak).",
               lambda rows, o: breakdown_bars(rows)),
)

#: Figures across sequence lengths: drawn once per (device, dtype) group, every sequence length together.
SEQ_LEN_FIGURES: tuple[FigureKind, ...] = (
    FigureKind("memory_vs_seq_len", "Peak memory vs sequence length of a language model at one batch size: each "
               "selector's selection, the inference floor, full and sparse fine-tuning steps.",
               lambda rows, o: memory_vs_seq_len(rows)),
)

#: Figures across world sizes (:mod:`fps_profile.plots.world_size`): drawn once per dtype over every device,
#: where rows are sharded (``world_size`` above 1).
WORLD_SIZE_FIGURES: tuple[FigureKind, ...] = (
    FigureKind("memory_vs_world_size", "Per-rank peak memory vs world size (FSDP2 ranks) at one per-rank batch: "
               "each selector's selection, full and sparse fine-tuning steps, offloaded cells as hollow points, "
               "every card's memory as a line; crosses mark cells out of memory on every card measured.",
               lambda rows, o: memory_vs_world_size(rows)),
)

#: Figures of the finetune rows (:mod:`fps_profile.plots.quality`): one per (device, dtype), a panel per group.
QUALITY_FIGURES: tuple[FigureKind, ...] = (
    FigureKind("accuracy_vs_memory", "What a selection is worth: held-out accuracy after sparse fine-tuning with "
               "each selector's mask (mean over seeds, bars: std) against the peak memory of the selection; "
               "full fine-tuning, head only and the frozen model as lines.", lambda rows, o: accuracy_vs_memory(rows)),
    FigureKind("accuracy_vs_fraction", "Held-out accuracy after fine-tuning against the share of parameters "
               "trained, per selector and budget, with the baselines.", lambda rows, o: accuracy_vs_fraction(rows)),
)


#: Every figure's name, in drawing order (what ``draw``'s ``only`` takes).
FIGURE_NAMES = tuple(k.name for k in FIGURES + SEQ_LEN_FIGURES + WORLD_SIZE_FIGURES + QUALITY_FIGURES)


@dataclass
class Drawn:
    """A saved figure: its kind, group and files (one per format)."""

    kind: FigureKind
    device: str
    dtype: str
    budget: str | None = None
    paths: list[Path] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def draw(rows: Iterable[Result], out_dir: str | os.PathLike, *, formats: Sequence[str] = ("png", "svg"),
         reference: str = "fps", batch: int | None = None, only: Sequence[str] | None = None) -> list[Drawn]:
    """Draw and save every figure the rows support.

    Files are ``<out_dir>/<figure>-<device>-<dtype>.<format>`` (``:`` in a
    device becomes ``_``; ``-<budget>`` is added where a device and dtype hold
    several budgets); ``out_dir`` is created if needed. The world-size figure is drawn over
    every device of a dtype: its ``<device>`` is the devices joined.

    Args:
        rows: Result rows (any devices and dtypes; a later row of a cell replaces an earlier one).
        out_dir: Folder for the figures.
        formats: Image formats matplotlib knows, e.g. ``("png", "svg", "pdf")``.
        reference: Selector the ratio figures divide by.
        batch: Batch size of the memory-vs-model-size figure (default: largest common to all models).
        only: Names of the figures to draw (:data:`FIGURE_NAMES`; default every one).

    Raises:
        UserError: ``out_dir`` cannot be created or written, or ``only`` names an unknown figure.
    """
    import matplotlib

    unknown = sorted(set(only or ()) - set(FIGURE_NAMES))
    if unknown:
        raise UserError(f"unknown figure {unknown[0]!r} (known: {', '.join(FIGURE_NAMES)})")
    out = figure_folder(out_dir, formats)
    from fps_profile.rows.phases import trains

    opts = {"reference": reference, "batch": batch}
    rows = list(rows)
    tuned = [r for r in rows if trains(r.phase)]  # fine-tuning rows have figures of their own
    rows = [r for r in rows if not trains(r.phase)]
    drawn = []
    with matplotlib.rc_context(RC):
        by_device: dict[tuple, list[Result]] = {}
        for r in tuned:  # every budget in one figure: the budgets are its points
            by_device.setdefault((r.device, r.dtype, None), []).append(r)
        across = {(",".join(sorted({device_label(r) for r in group})), dtype, budget): group
                  for (dtype, budget), group in world_size_groups(rows).items()}
        for kinds, groups in ((FIGURES, by_group(rows)), (SEQ_LEN_FIGURES, by_group(rows, split_seq_len=False)),
                              (WORLD_SIZE_FIGURES, across), (QUALITY_FIGURES, dict(sorted(by_device.items())))):
            for (device, dtype, budget), group in groups.items():
                for kind in kinds:
                    if only and kind.name not in only:
                        continue
                    fig = kind.draw(group, opts)
                    if fig is None:
                        continue
                    d = Drawn(kind, device, dtype, budget)
                    d.paths = save(fig, out, (kind.name, device, dtype, budget), formats)
                    drawn.append(d)
    return drawn


def figure_folder(out_dir: str | os.PathLike, formats: Sequence[str]) -> Path:
    """Check the formats and create ``out_dir``; one-line :class:`UserError` on either problem."""
    from matplotlib.backend_bases import FigureCanvasBase

    known = FigureCanvasBase.get_supported_filetypes()
    for fmt in formats:
        if fmt not in known:
            raise UserError(f"unknown figure format {fmt!r} (known: {', '.join(sorted(known))})")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create figure folder {str(out)!r}: {exc.strerror or exc}") from None
    return out


def save(fig, out: Path, parts: Sequence[str | None], formats: Sequence[str]) -> list[Path]:
    """Save ``fig`` as ``<out>/<parts joined by '-'>.<format>`` for each format (None parts left out)."""
    stem = "-".join(_slug(x) for x in parts if x)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        try:
            fig.savefig(path, format=fmt, metadata=_metadata(fmt))
        except OSError as exc:
            raise UserError(f"cannot write figure {str(path)!r}: {exc.strerror or exc}") from None
        paths.append(path)
    return paths



def _metadata(fmt: str) -> dict | None:
    # No creation date in the files: figures of the same rows are byte-identical, so diffs show real changes.
    return {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)


def plot_all(rows: Iterable[Result], out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "svg"),
             **options) -> list[Path]:
    """Draw every figure the rows support into ``out_dir``; the paths written (see :func:`draw`)."""
    return [p for d in draw(rows, out_dir, formats=formats, **options) for p in d.paths]
