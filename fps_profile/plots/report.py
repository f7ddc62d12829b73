"""A markdown report of a results file: environment, headline ratios, tables per model, figures.

Tables are selectors x batch sizes, one per quantity, per (device, dtype)
group (and budget, where a file mixes them) and model, then what each peak
is made of (selector x phase x category) where rows carry a breakdown. A cell is the value,
``OOM``/``error``/``timeout`` for a failed measurement (the peak table shows
what a simulated out-of-memory row needed: ``OOM (needs 106.0 GiB)``), or ``-``
where nothing was measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from fps_profile.errors import UserError
from fps_profile.plots import style as st
from fps_profile.analysis.series import FLOOR, FULL
from fps_profile.analysis.series import (Series, by_group, dedupe, device_memory_bytes, env_value, models, peak, series,
                                    series_name)
from fps_profile.rows.metrics import BREAKDOWN_CATEGORIES
from fps_profile.rows.result import Result
from fps_profile.analysis.summary import failed
from fps_profile.units import markdown_table
from fps_profile.units import fmt_bytes, fmt_ratio, fmt_seconds

ENV_KEYS = (("device_name", "device name"), ("device_memory_bytes", "device memory"), ("torch", "torch"),
            ("timm", "timm"), ("fps_profile", "fps-profile"), ("git_commit", "git commit"), ("python", "python"),
            ("cpu", "CPU"), ("torch_threads", "torch threads"), ("host", "host"))


def _cell(s: Series | None, batch: int, fmt: Callable[[Result], str | None], need: bool = False) -> str:
    """``fmt(row)``; ``OOM`` (with ``need``: ``OOM (needs 106.0 GiB)``, the peak a simulated card predicted),
    ``error``, ``timeout``; ``-`` where nothing was measured."""
    r = s.rows.get(batch) if s else None
    if r is None:
        return "-"
    if r.status != "ok":
        return failed("oom", peak(r) if need else None) if r.status == "oom" else r.status
    return fmt(r) or "-"


def _maybe(fmt, value):
    return None if value is None else fmt(value)


def _ratio_fmt(ref: Series | None, value: Callable[[Result], float | None]):
    def fmt(r: Result) -> str | None:
        d = ref.rows.get(r.batch_size) if ref else None
        a, b = value(r), (value(d) if d is not None and d.status == "ok" else None)
        return fmt_ratio(a / b) if a is not None and b else None

    return fmt


def model_tables(rows: Sequence[Result], model: str, reference: str = "fps") -> list[tuple[str, list, list]]:
    """The tables of one model of one (device, dtype) group: ``(caption, head, body)`` each.

    Peak memory, peak over the reference selector's (selection rows) and over
    the inference floor, median time and time over the reference's, and the
    compute floor where rows have one.
    """
    ser = series(rows, model, sparse=True)
    batches = sorted({r.batch_size for r in rows if r.model == model})
    head = ["", *(f"batch {b}" for b in batches)]
    ref, floor = ser.get(reference), ser.get(FLOOR)
    others = [n for n in ser if n not in (FLOOR, FULL, reference) and not n.startswith("train:")]
    wall = lambda r: r.wall_time_s  # noqa: E731
    ref_name = st.label(reference)
    specs = [
        ("Peak memory (live tensors, allocated)", list(ser), lambda r: _maybe(fmt_bytes, peak(r))),
        (f"Selection peak ÷ {ref_name} selection peak", others, _ratio_fmt(ref, peak)),
        ("Peak ÷ inference floor", [n for n in ser if n != FLOOR], _ratio_fmt(floor, peak)),
    ]
    if any(r.wall_time_s is not None for r in rows if r.model == model):
        specs += [("Median wall time", list(ser), lambda r: _maybe(fmt_seconds, r.wall_time_s)),
                  (f"Selection time ÷ {ref_name} selection time", others, _ratio_fmt(ref, wall))]
    if any(r.time_floor_s for r in rows if r.model == model):
        timed = any(r.time_floor_s and r.wall_time_s for r in rows if r.model == model)
        specs.append(("Compute floor (FLOPs ÷ peak rate)" + (" and the achieved fraction of it" if timed else ""),
                      list(ser), _floor_cell))
    out = []
    for caption, names, fmt in specs:
        need = caption == specs[0][0]  # the peak table shows the peak an out-of-memory row needed
        body = [[st.label(n), *(_cell(ser[n], b, fmt, need) for b in batches)] for n in names]
        if body:
            out.append((caption, head, body))
    return out


def breakdown_section(rows: Sequence[Result], model: str) -> list[str]:
    """Lines of the "what the peak is made of" table of one model: a row per selector (or reference) and phase.

    At the largest batch size with a breakdown; rows without one are named with the reason.
    """
    from fps_profile.analysis.explain import missing_reason
    from fps_profile.analysis.summary import mostly
    from fps_profile.plots.breakdown import bars, breakdown_batch

    ok = [r for r in rows if r.model == model and r.status == "ok"]
    batch = breakdown_batch(rows, model)
    if batch is None:
        return ["", f"No breakdown of the peaks: {missing_reason(ok[0])}."] if ok else []
    items = bars(rows, model, batch)
    cats = [c for c in BREAKDOWN_CATEGORIES if any(bd.get(c) for _, _, bd, _ in items)]
    body = [[f"{st.label(n)} · {ph}{' *' if is_peak else ''}", fmt_bytes(sum(bd.values())),
             *(fmt_bytes(bd.get(c, 0)) if bd.get(c) else "-" for c in cats), mostly(bd)]
            for n, ph, bd, is_peak in items]
    out = ["", f"What the peak is made of at batch {batch}: each phase's own peak, split by category "
           "(* the row's peak; activations are tensors saved for backward):", "",
           markdown_table(["", "peak", *(c.replace("_", " ") for c in cats), "mostly"], body)]
    extra = sorted({r.peak_breakdown_run for r in ok if r.batch_size == batch} - {None, "measured"})
    if extra:
        out += ["", "From an extra run with a live-tensor tracker after the measurement (cuda): its totals can "
                "differ a little from the measured peaks."]
    missing = [r for r in ok if r.batch_size == batch and not r.peak_breakdown_bytes]
    if missing:
        out += ["", "No breakdown for " + ", ".join(st.label(series_name(r)) for r in missing)
                + f": {missing_reason(missing[0])}."]
    return out


def _floor_cell(r: Result) -> str | None:
    if not r.time_floor_s:
        return None
    text = fmt_seconds(r.time_floor_s)
    return f"{text} ({100 * r.time_floor_s / r.wall_time_s:.0f}%)" if r.wall_time_s else text


HEADLINE_HEAD = ("model", "selector", "batch", "peak", "reference peak", "peak ratio", "ratio at smallest batch",
                 "time ratio", "out of memory from batch")


def headline(rows: Sequence[Result], model: str, reference: str = "fps") -> list[list[str]]:
    """Rows of the headline table (columns :data:`HEADLINE_HEAD`), one per selector other than the reference.

    Each selector's selection peak against the reference's at the largest
    batch where both ran (the ratio in bold), the same ratio at the smallest
    such batch, the time ratio at the largest, and the first batch at which
    the selector (and, after a slash, the reference) ran out of memory or,
    where the device's memory is known, peaked above it (a simulated row above
    its card is an ``oom``, :mod:`fps_profile.rows.fit`; the check also covers rows
    whose device memory is known only from the sim target).
    """
    ser = series(rows, model)
    ref = ser.get(reference)
    if ref is None:
        return []
    ref_ok = {b for b, r in ref.rows.items() if r.status == "ok" and peak(r)}
    memory = device_memory_bytes(rows)

    def first_oom(s: Series) -> str:
        over = [b for b, r in s.rows.items() if r.status == "ok" and memory and (peak(r) or 0) > memory]
        return str(min(s.batches("oom") + over, default="-"))

    out = []
    for name, s in ser.items():
        if name in (reference, FLOOR, FULL):
            continue
        common = sorted(ref_ok & {b for b, r in s.rows.items() if r.status == "ok" and peak(r)})
        if not common:
            continue
        hi, lo = common[-1], common[0]
        a, b = s.rows[hi], ref.rows[hi]
        out.append([
            model, st.label(name), str(hi), fmt_bytes(peak(a)), fmt_bytes(peak(b)),
            f"**{fmt_ratio(peak(a) / peak(b))}**",
            f"{fmt_ratio(peak(s.rows[lo]) / peak(ref.rows[lo]))} (batch {lo})" if lo != hi else "-",
            fmt_ratio(a.wall_time_s / b.wall_time_s) if a.wall_time_s and b.wall_time_s else "-",
            f"{first_oom(s)} / {first_oom(ref)}",
        ])
    return out


def _drop_empty_columns(head: list[str], body: list[list[str]], *, keep_first: bool) -> tuple[list, list]:
    """Leave out columns with nothing in them (e.g. time on simulated rows), and the group column if asked."""
    keep = [i for i in range(len(head)) if (i > 0 or keep_first)
            and any(row[i] not in ("-", "- / -") for row in body)]
    return [head[i] for i in keep], [[row[i] for i in keep] for row in body]


def _group_name(key: tuple, sep: str = " · ") -> str:
    """``("cuda", "bfloat16", None) -> "cuda · bfloat16"`` (the budget added when the group has one)."""
    return sep.join(x for x in key if x)


def environment_table(groups: dict[tuple, list[Result]]) -> str:
    """One column per group of :func:`~fps_profile.analysis.series.by_group`, one row per environment field."""
    head = ["", *(_group_name(k) for k in groups)]
    body = []
    for key, name in ENV_KEYS:
        values = [env_value(g, key) for g in groups.values()]
        if key == "device_memory_bytes":
            values = [" / ".join(fmt_bytes(int(v)) for v in x.split(" / ")) if x else None for x in values]
        if any(values):
            body.append([name, *(v or "-" for v in values)])
    return markdown_table(head, body)


def build_report(rows: Sequence[Result], *, figures: Sequence = (), base: str | os.PathLike = ".",
                 reference: str = "fps", source: str | None = None) -> str:
    """The report's markdown.

    Args:
        rows: Result rows (a later row of a cell replaces an earlier one).
        figures: :class:`~fps_profile.plots.Drawn` figures to embed (their PNG, else first file).
        base: Folder the report is written to; figure links are relative to it.
        reference: Selector the ratios divide by.
        source: Name of the results file, for the first line.
    """
    from fps_profile.analysis.quality import format_quality
    from fps_profile.rows.phases import trains

    quality = format_quality(rows)  # the finetune rows: a section of their own, not in the memory tables
    flat = dedupe(rows)
    env_groups = by_group(rows)
    rows = [r for r in rows if not trains(r.phase)]
    groups = by_group(rows)
    counts = {s: sum(r.status == s for r in flat) for s in ("ok", "oom", "error", "timeout")}
    lines = ["# fps-profile report", ""]
    lines.append(f"{len(flat)} measurements" + (f" from `{source}`" if source else "") + ": "
                 + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ". "
                 "Peak memory is the peak of live tensor bytes; times are medians of the timed repeats. "
                 "The inference floor is a no-grad forward of the same batch.")
    lines += ["", "## Environment", "", environment_table(env_groups)]
    ref_name = st.label(reference)
    head = [f"{ref_name} peak" if h == "reference peak" else h for h in HEADLINE_HEAD]
    body = [[_group_name(key), *line] for key, g in groups.items() for m in models(g)
            for line in headline(g, m, reference)]
    if body:
        lines += ["", "## Headline", "",
                  f"Each selector's selection peak against {ref_name}'s at the largest batch size both were "
                  f"measured at (peak ratio), at the smallest, the time ratio at the largest, and the first batch "
                  f"size that ran out of memory or peaked above the device's memory (selector / {ref_name}).",
                  "", markdown_table(*_drop_empty_columns(["", *head], body, keep_first=len(groups) > 1))]
    for key, g in groups.items():
        lines += ["", f"## {_group_name(key)}"]
        for model in models(g):
            params = max((r.params_total or 0 for r in g if r.model == model), default=0)
            lines += ["", f"### {model}" + (f" ({params:,} parameters)" if params else "")]
            for caption, head, body in model_tables(g, model, reference):
                lines += ["", f"{caption}:", "", markdown_table(head, body)]
            lines += breakdown_section(g, model)
    if quality:
        lines += ["", "## What a selection is worth", "",
                  "Held-out accuracy after fine-tuning with each selector's mask (finetune rows; mean ± sample "
                  "std over seeds, in %), beside full fine-tuning, the classifier alone (head) and the frozen "
                  "model; the selection's peak, a fine-tuning step's peak and the time per step.", "", quality]
    failed = [r for r in flat if r.status in ("error", "timeout")]
    if failed:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {r.device} {r.dtype} {r.model} batch {r.batch_size} {r.phase}:{r.selector or '-'}: "
                  f"{r.status}: {(r.error or '').splitlines()[0] if r.error else 'no message'}" for r in failed]
    figures = [d for d in figures if d.paths]
    if figures:
        lines += ["", "## Figures"]
        for d in figures:
            path = next((p for p in d.paths if p.suffix == ".png"), d.paths[0])
            rel = Path(os.path.relpath(path, base)).as_posix()
            key = (d.device, d.dtype, d.budget)
            lines += ["", f"![{d.kind.name} {_group_name(key, ' ')}]({rel})", "",
                      f"*{_group_name(key)}: {d.kind.caption}*"]
    return "\n".join(lines) + "\n"


def write_report(rows: Sequence[Result], out: str | os.PathLike, *, figures_dir: str | os.PathLike | None = None,
                 draw_figures: bool = True, formats: Sequence[str] = ("png", "svg"), reference: str = "fps",
                 source: str | None = None) -> tuple[Path, list[Path]]:
    """Write the report and its figures (default folder: ``<report stem>_figures`` beside it).

    Returns:
        The report's path and the figure files written.

    Raises:
        UserError: The report or a figure cannot be written.
    """
    from fps_profile.plots import draw

    out = Path(out)
    if out.is_dir():
        raise UserError(f"report output {str(out)!r} is a directory; give a file name such as report.md")
    if not out.parent.is_dir():
        raise UserError(f"folder {str(out.parent)!r} of the report does not exist")
    drawn = []
    if draw_figures:
        fig_dir = Path(figures_dir) if figures_dir else out.with_name(f"{out.stem}_figures")
        drawn = draw(rows, fig_dir, formats=formats, reference=reference)
    text = build_report(rows, figures=drawn, base=out.parent, reference=reference, source=source)
    try:
        out.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write report {str(out)!r}: {exc.strerror or exc}") from None
    return out, [p for d in drawn for p in d.paths]
