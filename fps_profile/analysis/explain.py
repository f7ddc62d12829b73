"""What a row's peak is made of, as text: the breakdown, the phase, the largest holders.

Thin layer over the row fields ``peak_breakdown_bytes``, ``peak_phase``,
``peak_top_modules`` and ``peak_breakdown_by_phase`` (recorded by
:mod:`fps_profile.trackers.breakdown`); ``fps-profile explain`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fps_profile.analysis import cells
from fps_profile.rows.label import describe
from fps_profile.rows.result import Result
from fps_profile.analysis.summary import mostly
from fps_profile.units import fmt_bytes, markdown_table

BAR = 24


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

    head = f"{describe(row)}: peak {fmt_bytes(row.peak_allocated_bytes)}"
    if row.status != "ok":  # an oom row of a simulated card keeps the peak it needed
        head += f" ({row.status.upper()}: {row.error})" if row.error else f" ({row.status.upper()})"
    head = "\n".join([head, *explain_lines(row)])
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


def find_rows(rows: Sequence[Result], spec: str) -> list[Result]:
    """The rows matching a ``--cell`` spec (the newest row of each cell; keys: :func:`fps_profile.analysis.cells.keys`).

    Raises:
        UserError: Bad spec, or nothing matches (naming the values the file has).
    """
    from fps_profile.analysis.series import dedupe

    return cells.find(dedupe(rows), spec)


def overview(rows: Sequence[Result]) -> str:
    """One line per row: what it is, its cell (the frame, and every axis some row sets), its peak,
    the phase of the peak and its largest category."""
    from fps_profile.analysis.series import dedupe

    rows = dedupe(rows)
    names = cells.columns(rows)
    tuned = any(r.eval_accuracy is not None for r in rows)  # finetune rows: their accuracy too
    body = [[cells.what(r), *(cells.shown(getattr(r, n, None)) for n in names), fmt_bytes(r.peak_allocated_bytes),
             r.peak_phase or "-", mostly(r.peak_breakdown_bytes)]
            + ([f"{100 * r.eval_accuracy:.1f}%" if r.eval_accuracy is not None else "-"] if tuned else [])
            for r in rows]
    return markdown_table(["what", *map(cells.header, names), "peak", "peak phase", "peak is mostly"]
                          + (["accuracy"] if tuned else []), body)
