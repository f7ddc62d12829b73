"""What a selection is worth: ``finetune`` rows summarised over seeds.

A *point* is one series (a selector with its options and knobs, or a baseline: ``full``,
``head``, ``frozen``) at one budget and learning rate in one *group* (model, data, weights,
device, dtype, batch, steps); its figures are the mean and the sample standard deviation
over the group's seeds of the held-out accuracy, and the means of the selection's peak,
the fine-tuning step's peak, the trainable fraction and the time per step. Tables
(:func:`format_quality`), figures (:mod:`fps_profile.plots.quality`), ``fps-profile report``
and ``explain`` read them from here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from fps_profile.rows.label import knobs as knob_suffix
from fps_profile.rows.label import model_label
from fps_profile.rows.phases import trains
from fps_profile.rows.result import Result
from fps_profile.rows.schema import selector_variant
from fps_profile.rows.sources import short
from fps_profile.units import fmt_bytes, fmt_seconds

#: Baseline series: every parameter trained, the classifier alone, nothing.
FULL, HEAD, FROZEN = "full", "head", "frozen"
BASELINES = (FULL, HEAD, FROZEN)


@dataclass(frozen=True)
class Group:
    """What the points of one comparison share."""

    model: str
    data: str | None
    weights: str | None
    device: str
    dtype: str
    batch_size: int
    steps: int | None

    def describe(self) -> str:
        """``resnet10t @32px · data digits:5-9 · weights ckpt.pt · cpu float32 · batch 32 · 100 steps``."""
        parts = [self.model, f"data {short(self.data) if self.data else 'synthetic'}",
                 f"weights {short(self.weights) if self.weights else 'random init'}",
                 f"{self.device} {self.dtype}", f"batch {self.batch_size}"]
        if self.steps:
            parts.append(f"{self.steps} steps")
        return " · ".join(parts)


@dataclass
class Point:
    """One series at one budget in one :class:`Group`, over its seeds."""

    group: Group
    series: str
    budget: str | None
    lr: float | None = None
    rows: list[Result] = field(default_factory=list)
    failed: list[Result] = field(default_factory=list)

    @property
    def baseline(self) -> bool:
        return self.series.split(" ")[0] in BASELINES

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed or 0 for r in self.rows)

    def _values(self, get) -> list[float]:
        return [v for v in (get(r) for r in self.rows) if v is not None]

    def mean(self, get) -> float | None:
        values = self._values(get)
        return statistics.fmean(values) if values else None

    def std(self, get) -> float | None:
        """Sample standard deviation over the seeds (0 with one seed, None with none)."""
        values = self._values(get)
        return statistics.stdev(values) if len(values) > 1 else 0.0 if values else None

    @property
    def accuracy(self) -> float | None:
        return self.mean(lambda r: r.eval_accuracy)

    @property
    def accuracy_std(self) -> float | None:
        return self.std(lambda r: r.eval_accuracy)

    @property
    def select_peak(self) -> float | None:
        return self.mean(lambda r: r.select_peak_bytes)

    @property
    def train_peak(self) -> float | None:
        return self.mean(lambda r: r.peak_allocated_bytes if r.steps else None)

    @property
    def trainable_fraction(self) -> float | None:
        return self.mean(lambda r: r.params_trainable / r.params_total if r.params_total and
                         r.params_trainable is not None else None)

    @property
    def step_time(self) -> float | None:
        return self.mean(lambda r: r.wall_time_s if r.steps else None)


def series_of(row: Result) -> str:
    """``fps``, ``gps[loss=ce]``, ``full``, ``head`` or ``frozen``, then the knobs (``+bf16``); an option
    naming a file shows its name (``gd-fps[anchor=a.safetensors]``)."""
    options = {k: short(v) if isinstance(v, str) else v for k, v in (row.options or {}).items()}
    return (selector_variant(row.selector, options) or FULL) + knob_suffix(row)


def group_of(row: Result) -> Group:
    return Group(model_label(row), row.data, row.weights, row.device, row.dtype, row.batch_size,
                 row.steps if row.selector != FROZEN else None)


def points(rows: Sequence[Result]) -> dict[Group, list[Point]]:
    """The finetune rows (the newest row of each cell) as points by group; frozen rows (no steps
    or learning rate) join every group of their model, data, weights, device, dtype and batch."""
    from fps_profile.analysis.series import dedupe

    mine = [r for r in dedupe(rows) if trains(r.phase)]
    found: dict[tuple, Point] = {}
    for r in mine:
        key = (group_of(r), series_of(r), r.budget, r.lr)
        point = found.setdefault(key, Point(*key))
        (point.rows if r.status == "ok" and r.eval_accuracy is not None else point.failed).append(r)
    out: dict[Group, list[Point]] = {}
    for p in found.values():
        if p.group.steps is not None:
            out.setdefault(p.group, []).append(p)
    for p in [p for p in found.values() if p.group.steps is None]:  # frozen: beside every step count
        homes = [g for g in out if g.steps is not None and _inputs(g) == _inputs(p.group)]
        for g in homes or [p.group]:
            out.setdefault(g, []).append(Point(g, p.series, p.budget, p.lr, p.rows, p.failed))
    return {g: sorted(ps, key=_order) for g, ps in out.items()}


def _inputs(g: Group) -> tuple:
    return g.model, g.data, g.weights, g.device, g.dtype, g.batch_size


def _order(p: Point) -> tuple:
    name = p.series.split(" ")[0]
    budget = p.budget or ""
    k = budget.partition("=")[2]
    return (BASELINES.index(name) if name in BASELINES else -1, name, p.series, p.lr or 0.0,
            budget.partition("=")[0], float(k) if k else 0.0)


def chance(rows: Sequence[Result]) -> float | None:
    """1 / the number of classes of the rows' data, where they record it."""
    for r in rows:
        classes = (r.env or {}).get("data", {}).get("data_classes") if isinstance(r.env, dict) else None
        if classes:
            return 1.0 / len(classes)
    return None


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if n > 1 and std is not None else "")


def quality_table(group_points: list[Point]) -> tuple[list[str], list[list[str]]]:
    """``(head, body)`` of one group: a line per series and budget."""
    head = ["what", "budget", "lr", "accuracy %", "seeds", "trainable", "selection peak", "step peak", "time/step"]
    body = []
    for p in group_points:
        frac = p.trainable_fraction
        body.append([p.series, p.budget or "-", f"{p.lr:g}" if p.lr else "-",
                     _pm(p.accuracy, p.accuracy_std, len(p.rows)),
                     str(len(p.rows)) + (f" ({len(p.failed)} failed)" if p.failed else ""),
                     "-" if frac is None else f"{100 * frac:.3g}%",
                     fmt_bytes(p.select_peak) if p.select_peak else "-",
                     fmt_bytes(p.train_peak) if p.train_peak else "-",
                     fmt_seconds(p.step_time) if p.step_time else "-"])
    return head, body


def format_quality(rows: Sequence[Result]) -> str:
    """Markdown: per group, each series' held-out accuracy (mean ± sample std over seeds, in %),
    trainable fraction, selection and step peaks, time per step; empty without finetune rows."""
    from fps_profile.units import markdown_table

    out = []
    for group, ps in points(rows).items():
        c = chance([r for p in ps for r in p.rows])
        out += ["" if out else None, f"Fine-tuning quality ({group.describe()})"
                + (f"; chance {100 * c:.1f}%" if c else "") + ":", "", markdown_table(*quality_table(ps))]
    return "\n".join(x for x in out if x is not None)


def explain_lines(row: Result) -> list[str]:
    """What a finetune row reached, for ``fps-profile explain``; empty for other rows."""
    if not trains(row.phase) or row.status != "ok":
        return []
    c = chance([row])
    acc = "-" if row.eval_accuracy is None else f"{100 * row.eval_accuracy:.2f}%"
    lines = [f"  fine-tuned {row.steps or 0} steps ({row.examples_seen or 0:,} examples, seed {row.seed or 0}): "
             f"held-out accuracy {acc}" + (f" (chance {100 * c:.1f}%)" if c else "")
             + (f", loss {row.eval_loss:.4f}" if row.eval_loss is not None else "")
             + (f", last training loss {row.train_loss_final:.4f}" if row.train_loss_final is not None else "")]
    if row.select_peak_bytes:
        lines.append(f"  the selection that made the mask peaked at {fmt_bytes(row.select_peak_bytes)}; "
                     "the peak above is a fine-tuning step's")
    return lines
