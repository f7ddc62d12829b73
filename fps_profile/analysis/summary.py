"""The end-of-sweep table: each selector's peak and time against GPS and the floor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fps_profile.rows import phases
from fps_profile.rows.label import model_label, series
from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES
from fps_profile.rows.result import Result
from fps_profile.units import fmt_bytes, fmt_ratio, fmt_seconds, markdown_table


@dataclass(frozen=True)
class SummaryLine:
    """One selector (or the floor / a train step) at one (device, dtype, model, batch)."""

    device: str
    dtype: str
    model: str
    batch_size: int
    what: str  # selector name, "floor" (inference), "train:floor", "train:full", "train:<selector> [via <trainer>]"
    status: str
    peak_bytes: int | None
    time_s: float | None
    peak_vs_floor: float | None
    peak_vs_gps: float | None
    time_vs_gps: float | None
    mostly: str | None = None  # the peak's largest category and its share, e.g. "activations 90%"
    table: str = "selection"  # the phase table's summary table: "selection" or "train"


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(rows: Sequence[Result], reference: str = "gps") -> list[SummaryLine]:
    """Lines for every select / inference / train_step row, grouped by cell.

    Groups are ordered by device, dtype, model size (``params_total``) and batch;
    within a group: the floor, the selectors, full fine-tuning, sparse steps.
    """
    from fps_profile.rows.phases import trains

    groups: dict[tuple, list[Result]] = {}
    size: dict[str, int] = {}
    # Image size and sequence length as numbers, so that seq=512 sorts before seq=2048; finetune rows: analysis.quality.
    # Sharded rows apart: a rank's floor and reference are those of the same world size and offload.
    for r in [r for r in rows if not trains(r.phase)]:
        key = (r.device, r.dtype, r.model, r.image_size or 0, r.seq_len or 0, r.batch_size,
               getattr(r, "world_size", None) or 1, getattr(r, "offload", None) or "")
        groups.setdefault(key, []).append(r)
        size[r.model] = max(size.get(r.model, 0), r.params_total or 0)
    out = []
    for (device, dtype, _, _, _, batch, _, _), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][:2], size[kv[0][2]], kv[0][2:])):
        model = model_label(rs[0])
        ok = [r for r in rs if r.status == "ok"]
        # The plain floor and reference (no knobs, one batch) where there is one: the others are compared with them.
        plain = sorted(ok, key=lambda r: (r.knobs != "", (r.num_batches or 1) > 1))
        floor = next((r for r in plain if r.phase == "inference"), None)
        ref = next((r for r in plain if r.phase == "select" and r.variant == reference), None)
        for r in sorted(rs, key=lambda r: (phases.order(r.phase), r.selector is not None, r.variant or "", r.knobs,
                                           r.num_batches or 1, getattr(r, "trainer", None) or "")):
            is_sel = r.phase == "select"
            out.append(SummaryLine(
                device, dtype, model, batch, series(r), r.status, r.peak_allocated_bytes, r.wall_time_s,
                _ratio(r.peak_allocated_bytes, floor.peak_allocated_bytes if floor else None),
                _ratio(r.peak_allocated_bytes, ref.peak_allocated_bytes if ref and is_sel else None),
                _ratio(r.wall_time_s, ref.wall_time_s if ref and is_sel else None),
                mostly(r.peak_breakdown_bytes) if r.peak_breakdown_bytes else None,
                phases.get_phase(r.phase).table if r.phase in phases.PHASES else "selection",
            ))
    return out


def format_summary(rows: Sequence[Result], reference: str = "gps") -> str:
    """Markdown tables of :func:`summarize`: selections (with the floor), then train steps.

    Columns that hold one value throughout (device, dtype) become a heading instead; the
    "peak is mostly" column (the peak's largest category) appears where rows have a breakdown.
    """
    from fps_profile.analysis.quality import format_quality

    lines = summarize(rows, reference)
    quality = format_quality(rows)
    if not lines:
        return quality or "(no rows)"
    constant = [c for c in ("device", "dtype") if len({getattr(s, c) for s in lines}) == 1]
    keys = [c for c in ("device", "dtype", "model", "batch_size") if c not in constant]
    heading = " · ".join(str(getattr(lines[0], c)) for c in constant)

    def cells(s: SummaryLine, values: list[str]) -> list[str]:
        lead = [str(getattr(s, k)) for k in keys] + [s.what]
        return lead + (values if s.status == "ok" else [failed(s.status, s.peak_bytes)] + [""] * (len(values) - 1))

    head = [k.replace("_size", "") for k in keys] + ["what"]
    explained = any(s.mostly for s in lines)
    tail = (lambda s: [s.mostly or "-"]) if explained else (lambda s: [])  # noqa: E731
    sel = [cells(s, [fmt_bytes(s.peak_bytes), fmt_ratio(s.peak_vs_floor), fmt_ratio(s.peak_vs_gps),
                     fmt_seconds(s.time_s), fmt_ratio(s.time_vs_gps), *tail(s)])
           for s in lines if s.table == "selection"]
    train = [cells(s, [fmt_bytes(s.peak_bytes), fmt_ratio(s.peak_vs_floor), fmt_seconds(s.time_s), *tail(s)])
             for s in lines if s.table == "train"]
    extra = ["peak is mostly"] if explained else []
    out = []
    if sel:
        out += [f"Selection{' (' + heading + ')' if heading else ''}: peak memory and time, against the "
                f"inference floor and {reference}", "",
                markdown_table(head + ["peak", "peak/floor", f"peak/{reference}", "time", f"time/{reference}", *extra],
                               sel)]
    if train:
        out += ["" if out else None, f"Fine-tuning step{' (' + heading + ')' if heading else ''}: "
                "full, and sparse with each selector's mask", "",
                markdown_table(head + ["peak", "peak/floor", "time", *extra], train)]
    if quality:
        out += ["", quality]
    return "\n".join(x for x in out if x is not None)


def dominant(breakdown: dict[str, int] | None) -> tuple[str, float] | None:
    """The largest category of a breakdown and its share of the total, or None."""
    total = sum(breakdown.values()) if breakdown else 0
    if total <= 0:
        return None
    order = {c: i for i, c in enumerate(BREAKDOWN_CATEGORIES)}
    name = max(breakdown, key=lambda c: (breakdown[c], -order.get(c, len(order))))
    return name, breakdown[name] / total


def mostly(breakdown: dict[str, int] | None) -> str:
    """``"activations 90%"``: the largest category and its share; ``"-"`` without a breakdown."""
    d = dominant(breakdown)
    return "-" if d is None else f"{d[0].replace('_', ' ')} {100 * d[1]:.0f}%"


def failed(status: str, peak_bytes: int | None) -> str:
    """The cell of a row that is not ok: ``OOM``, or ``OOM (needs 106.0 GiB)`` where a simulated card
    predicted the peak that did not fit; ``ERROR``, ``TIMEOUT``."""
    need = f" (needs {fmt_bytes(peak_bytes)})" if status == "oom" and peak_bytes else ""
    return status.upper() + need
