"""What a row's peak is made of, as text: the breakdown, the phase, the largest holders.

Thin layer over the row fields ``peak_breakdown_bytes``, ``peak_phase``,
``peak_top_modules`` and ``peak_breakdown_by_phase`` (recorded by
:mod:`fps_profile.trackers.breakdown`); ``fps-profile explain`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fps_profile.errors import UserError, did_you_mean
from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES
from fps_profile.rows.label import describe
from fps_profile.rows.result import Result
from fps_profile.analysis.summary import markdown_table
from fps_profile.units import fmt_bytes

CELL_KEYS = ("what", "selector", "model", "batch", "dtype", "device", "phase", "budget", "scope", "seed", "data",
             "weights", "steps")
BAR = 24


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


def what(row: Result) -> str:
    """The row as the summary names it: a selector, ``floor``, ``train:full``, ``train:<selector>``,
    ``finetune:full``, ``finetune:<selector>``, ``finetune:head`` or ``finetune:frozen``."""
    if row.phase == "inference":
        return "floor"
    if row.phase == "train_step":
        return f"train:{row.selector or 'full'}"
    if row.phase == "finetune":
        return f"finetune:{row.selector or 'full'}"
    return row.selector or "?"


def missing_reason(row: Result) -> str:
    """Why ``row`` has no breakdown, in one sentence."""
    if row.status != "ok":
        return f"the measurement did not succeed (status {row.status}), so there is no peak to explain"
    err = row.env.get("breakdown_error") if isinstance(row.env, dict) else None
    if err:
        return f"the extra run that records the breakdown on {row.device} failed: {err}"
    return ("the row comes from a results file written before fps-profile recorded breakdowns, or from a "
            "backend without one; measure the cell again to get one")


def explain(row: Result, top: int = 10) -> str:
    """The text ``fps-profile explain`` prints for one row (a finetune row: what it reached first)."""
    from fps_profile.analysis.quality import explain_lines

    head = "\n".join([f"{describe(row)}: peak {fmt_bytes(row.peak_allocated_bytes)}", *explain_lines(row)])
    bd = row.peak_breakdown_bytes
    if not bd:
        return f"{head}\n  no breakdown: {missing_reason(row)}."
    total = sum(bd.values())
    where = f" in {row.peak_phase}" if row.peak_phase else ""
    if row.peak_breakdown_run == "extra":
        source = (f"from an extra run with a live-tensor tracker after the measurement (its peak: "
                  f"{fmt_bytes(total)}; the measured peak above comes from the allocator)")
    else:
        source = "in the measured run; the categories sum to the peak"
        if row.peak_allocated_bytes is not None and total != row.peak_allocated_bytes:
            source += f" (here {fmt_bytes(total)}: they differ)"
    lines = [f"{head}{where}, {source}", ""]
    body = [[c.replace("_", " "), fmt_bytes(b), f"{100 * b / total:.1f}%" if total else "-", _bar(b, total)]
            for c, b in bd.items() if b]
    lines.append(markdown_table(["category", "bytes", "share", ""], body))
    phases = row.peak_breakdown_by_phase or {}
    if len(phases) > 1:
        body = [[("* " if p == row.peak_phase else "  ") + p, fmt_bytes(sum(b.values())), mostly(b)]
                for p, b in phases.items()]
        lines += ["", "Peak of each phase (* the row's peak):", "",
                  markdown_table(["phase", "peak", "mostly"], body)]
    holders = (row.peak_top_modules or [])[:top]
    if holders:
        body = [[h["module"], h["category"].replace("_", " "), fmt_bytes(h["bytes"]),
                 f"{100 * h['bytes'] / total:.1f}%" if total else "-"] for h in holders]
        lines += ["", "Largest holders at the peak (module, or what no module holds, in parentheses):", "",
                  markdown_table(["holder", "category", "bytes", "share"], body)]
    return "\n".join(lines)


def _bar(part: int, total: int) -> str:
    return "#" * round(BAR * part / total) if total else ""


def parse_cell(spec: str) -> dict[str, str]:
    """``"what=gps model=vit_small_patch16_224 batch=16"`` (spaces or commas) -> a filter.

    Raises:
        UserError: A term that is not ``key=value`` with a known key.
    """
    out = {}
    for term in spec.replace(",", " ").split():
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise UserError(f"--cell terms look like key=value (keys: {', '.join(CELL_KEYS)}), not {term!r}")
        if key not in CELL_KEYS:
            raise did_you_mean(key, CELL_KEYS, "--cell key")
        out[key] = value
    return out


def _value(row: Result, key: str) -> str:
    if key == "what":
        return what(row)
    if key == "batch":
        return str(row.batch_size)
    return str(getattr(row, key))


def find_rows(rows: Sequence[Result], spec: str) -> list[Result]:
    """The rows matching a ``--cell`` spec (the newest row of each cell).

    Raises:
        UserError: Bad spec, or nothing matches (naming the values the file has).
    """
    from fps_profile.plots.data import dedupe

    wanted = parse_cell(spec)
    rows = dedupe(rows)
    found = [r for r in rows if all(_value(r, k) == v for k, v in wanted.items())]
    if not found:
        for key, value in wanted.items():
            known = sorted({_value(r, key) for r in rows})
            if value not in known:
                raise did_you_mean(value, known, f"{key} in this file", show_known=len(known) <= 12)
        raise UserError(f"no row matches --cell {spec!r} (each term matches some row, but not all together)")
    return found


def overview(rows: Sequence[Result]) -> str:
    """One line per row: what it is, its peak, the phase of the peak and its largest category."""
    from fps_profile.plots.data import dedupe

    rows = dedupe(rows)
    tuned = any(r.eval_accuracy is not None for r in rows)  # finetune rows: their accuracy too
    body = [[what(r), r.model, str(r.batch_size), r.dtype, r.device, fmt_bytes(r.peak_allocated_bytes),
             r.peak_phase or "-", mostly(r.peak_breakdown_bytes)]
            + ([f"{100 * r.eval_accuracy:.1f}%" if r.eval_accuracy is not None else "-"] if tuned else [])
            for r in rows]
    return markdown_table(["what", "model", "batch", "dtype", "device", "peak", "peak phase", "peak is mostly"]
                          + (["accuracy"] if tuned else []), body)
