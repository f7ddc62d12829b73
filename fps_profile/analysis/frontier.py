"""The memory-time frontier: which selector and knob setting selects on N images fastest within a memory budget.

Every ``select`` row that is ``ok`` is one point: its peak memory against its
*selection time for N images*, defined as the row's time per image times N::

    time(N) = time / (batch_size x num_batches) x N

where ``time`` is the median wall time on ``cpu``/``cuda`` rows and the FLOP
floor (``time_floor_s``: FLOPs at the card's datasheet rate, a lower bound) on
``sim`` rows. A *setting* is the batch size with the knobs the row was measured
with (``amp``, ``checkpointing``, ``micro_batch``; a row without them is plain).
Per selector (with its options, e.g. ``gps[loss=ce]``) the frontier is the
lower-left (Pareto) envelope of its points; the table gives, for each memory
budget, the fastest setting whose peak fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fps_profile.analysis.series import sort_names
from fps_profile.analysis.series import by_group, models, peak
from fps_profile.rows.schema import knob_label
from fps_profile.rows.result import Result
from fps_profile.units import markdown_table
from fps_profile.units import fmt_bytes, fmt_seconds

GiB = 1024**3
DEFAULT_IMAGES = 2048
# Memory of the common cards: 24 GiB (RTX 4090 class), 40 and 80 GiB (A100, H100), 141 GiB (H200).
DEFAULT_BUDGETS = (24 * GiB, 40 * GiB, 80 * GiB, 141 * GiB)
TIME_KINDS = {"wall": "median wall time", "floor": "FLOP floor (FLOPs at the datasheet rate, a lower bound)"}


@dataclass(frozen=True)
class Setting:
    """How a selection was run: batch size and knobs."""

    batch_size: int
    amp: str | None = None
    checkpointing: bool = False
    micro_batch: int | None = None

    @property
    def knobs(self) -> str:
        """The knobs alone, as every label writes them: ``"plain"``, ``"+bf16"``, ``"+bf16 +ckpt +mb8"``."""
        return knob_label(self.amp, self.checkpointing, self.micro_batch).strip() or "plain"

    def sort_key(self) -> tuple:
        return self.batch_size, self.amp or "", self.checkpointing, self.micro_batch or 0

    def label(self) -> str:
        """``"b=64"``, ``"b=64 +bf16 +ckpt +mb8"``."""
        return f"b={self.batch_size}" + ("" if self.knobs == "plain" else f" {self.knobs}")


def setting_of(row: Result) -> Setting:
    return Setting(row.batch_size, row.amp, bool(row.checkpointing), row.micro_batch)


def time_kind(row: Result) -> str:
    """``"floor"`` on a backend without wall time (the sim's predictions), ``"wall"`` elsewhere."""
    from fps_profile.measure.backends import predicts

    return "floor" if predicts(row.device) else "wall"


def selection_time(row: Result, images: int) -> float | None:
    """Seconds to select on ``images`` images at the row's time per image (None where the row has no time)."""
    t = row.time_floor_s if time_kind(row) == "floor" else row.wall_time_s
    if not t:
        return None
    return t / (row.batch_size * (row.num_batches or 1)) * images


@dataclass(frozen=True)
class Point:
    """One ``ok`` selection row on the frontier plane."""

    selector: str
    setting: Setting
    time_s: float
    peak_bytes: int
    row: Result = field(compare=False, repr=False)


@dataclass
class Panel:
    """The selection rows of one (device, dtype[, budget]) group and one model (with its input size if set)."""

    device: str
    dtype: str
    budget: str | None
    model: str
    time_kind: str
    points: list[Point]
    no_time: list[Result]
    ooms: list[Result]

    @property
    def title(self) -> str:
        return " · ".join(x for x in (self.model, self.device, self.dtype, self.budget) if x)

    def selectors(self) -> list[str]:
        return sort_names({p.selector for p in self.points} | {r.variant or "?" for r in self.ooms})


def panels(rows: Iterable[Result], images: int = DEFAULT_IMAGES) -> list[Panel]:
    """The frontier panels of a results file: one per (device, dtype, budget) group and model with selection rows.

    Groups are those of :func:`~fps_profile.analysis.series.by_group`, so ``cpu`` and ``sim`` rows (and GPUs of
    different models) are never mixed. Rows are de-duplicated (the last of a cell wins).
    """
    out = []
    for (device, dtype, budget), group in by_group(r for r in rows if r.phase == "select").items():
        # Inputs of another size are another workload: their own panel.
        for model, size in dict.fromkeys((m, input_size(r)) for m in models(group) for r in group if r.model == m):
            mine = [r for r in group if r.model == model and input_size(r) == size]
            points, no_time = [], []
            for r in mine:
                if r.status != "ok" or peak(r) is None:
                    continue
                t = selection_time(r, images)
                if t is None:
                    no_time.append(r)
                else:
                    points.append(Point(r.variant or "?", setting_of(r), t, peak(r), r))
            ooms = [r for r in mine if r.status == "oom"]
            if points or no_time or ooms:
                out.append(Panel(device, dtype, budget, model + size, time_kind(mine[0]), points, no_time, ooms))
    return out


def input_size(row: Result) -> str:
    """``""`` at the model's own input size, else ``" 384px"`` (``--image-size``) or ``" seq_len=512"`` (LLMs)."""
    seq_len = getattr(row, "seq_len", None)
    return (f" {row.image_size}px" if row.image_size else "") + (f" seq_len={seq_len}" if seq_len else "")


def envelope(points: Sequence[Point]) -> list[Point]:
    """The lower-left (Pareto) envelope: points no other point beats in both time and peak, fastest first.

    Of several points at the same time and peak, the first in (time, peak, setting) order stands for them.
    """
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.time_s, p.peak_bytes, p.setting.sort_key())):
        if not out or p.peak_bytes < out[-1].peak_bytes:
            out.append(p)
    return out


def fastest_fitting(points: Sequence[Point], budget_bytes: int) -> Point | None:
    """The fastest point whose peak fits ``budget_bytes`` (ties: the lower peak), or None."""
    fits = [p for p in points if p.peak_bytes <= budget_bytes]
    return min(fits, key=lambda p: (p.time_s, p.peak_bytes, p.setting.sort_key()), default=None)


def choices(panel: Panel, budgets: Sequence[int] = DEFAULT_BUDGETS) -> list[dict]:
    """Per selector and budget, the fastest fitting setting, as plain dicts (the ``--json`` lines)."""
    out = []
    for sel in panel.selectors():
        mine = [p for p in panel.points if p.selector == sel]
        for b in budgets:
            p = fastest_fitting(mine, b)
            s = p.setting if p else None
            out.append({"device": panel.device, "dtype": panel.dtype, "budget": panel.budget, "model": panel.model,
                        "selector": sel, "memory_bytes": b, "fits": p is not None,
                        "batch_size": s and s.batch_size, "amp": s and s.amp,
                        "checkpointing": s and s.checkpointing, "micro_batch": s and s.micro_batch,
                        "time_s": p and p.time_s, "time_kind": panel.time_kind, "peak_bytes": p and p.peak_bytes})
    return out


def markdown(panel_list: Sequence[Panel], images: int = DEFAULT_IMAGES,
             budgets: Sequence[int] = DEFAULT_BUDGETS) -> str:
    """The frontier tables: per panel, a row per selector and a column per budget with the fastest setting that fits."""
    parts = [f"# Memory-time frontier: selection on {images:,} images",
             "",
             f"Each cell: the fastest setting whose peak fits that memory, its time for {images:,} images "
             f"(the row's time / (batch size x batches) x {images:,}) and its peak. Setting: batch size b and "
             "knobs (+bf16/+fp16: mixed precision; +ckpt: activation checkpointing; +mbM: micro-batches of M)."]
    for panel in panel_list:
        parts += ["", f"## {panel.title}", "", f"Time: {TIME_KINDS[panel.time_kind]}."]
        cells: dict[str, list[str]] = {}
        for c in choices(panel, budgets):
            text = "none fits"
            if c["fits"]:
                s = Setting(c["batch_size"], c["amp"], c["checkpointing"], c["micro_batch"])
                text = f"{s.label()}: {fmt_seconds(c['time_s'])}, {fmt_bytes(c['peak_bytes'])}"
            cells.setdefault(c["selector"], []).append(text)
        if cells:
            head = ["selector", *(f"fits {fmt_budget(b)}" for b in budgets)]
            parts += ["", markdown_table(head, [[sel, *texts] for sel, texts in cells.items()])]
        parts += [f"\n{line}" for line in notes(panel)]
    return "\n".join(parts) + "\n"


def notes(panel: Panel) -> list[str]:
    """What a panel cannot show: rows without a time, out-of-memory rows."""
    out = []
    if panel.no_time:
        what = "time_floor_s" if panel.time_kind == "floor" else "wall_time_s"
        out.append(f"{len(panel.no_time)} ok selection rows of {panel.title} have no {what}, so no point: "
                   + ", ".join(f"{r.variant} {setting_of(r).label()}" for r in panel.no_time))
    if panel.ooms:
        out.append(f"Out of memory ({len(panel.ooms)}): "
                   + ", ".join(f"{r.variant} {setting_of(r).label()}" for r in panel.ooms))
    return out


def fmt_budget(n: int) -> str:
    """``24 * 2**30 -> "24 GiB"``; other sizes as :func:`~fps_profile.units.fmt_bytes`."""
    return f"{n // GiB} GiB" if n % GiB == 0 else fmt_bytes(n)
