"""The performance gate: compare two results files cell by cell.

Every metric of every cell present in both files is compared in its direction
(:attr:`fps_profile.rows.metrics.Metric.better`): lower is better for costs, higher
for accuracy. A metric *got worse* when ``new > old * (1 + tolerance)`` (lower is
better) or ``new < old * (1 - tolerance)`` (higher is better). Tolerances depend on
the kind of metric:

``exact``   deterministic figures - FLOPs, the time floor derived from them, and
            the bytes predicted by the ``sim`` backend: 0 by default, so any
            increase fails;
``memory``  measured memory (allocator peaks on cpu/cuda, NVML, host RSS): 5%;
``time``    measured wall time: 10%, and, as asv judges it, only when the two rows'
            repeats (``wall_times_s``) differ: their confidence intervals do not overlap
            (:mod:`fps_profile.analysis.noise`). On a backend whose times are noise (the
            backend table's ``time_noise``: a shared CPU) time is not gated unless asked for
            by name (``--metric time``); the report says so;
``quality`` what fine-tuning reached (accuracy, losses): 1% (the same seed on the same
            machine repeats them exactly; another CPU's kernels may round differently).

Parameter counts are shown when they change but never fail the gate (more
trainable parameters is a behaviour change, not a cost: its cost shows in the
bytes). So is the breakdown of the peak (``peak_breakdown_bytes.<category>``
and ``peak_phase``): bytes moving from one category to another show even when
the total holds, and the total is what is gated. A cell whose status goes from ``ok`` to anything else fails; the
reverse is an improvement. Only metrics are compared, never ``env``, so a
baseline made on another machine gates a run here as long as the
deterministic figures agree; the report names the versions and devices that differ
(:mod:`fps_profile.analysis.envdiff`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fps_profile.analysis import envdiff, noise
from fps_profile.errors import UserError, did_you_mean
from fps_profile.rows.label import describe
from fps_profile.rows.metrics import BY_NAME, KINDS, SHOWN_ONLY, better, gated, metric_value
from fps_profile.rows.result import Result
from fps_profile.rows.store import latest
from fps_profile.units import fmt_bytes, fmt_seconds, parse_percent

DEFAULT_TOLERANCES = {"exact": 0.0, "memory": 0.05, "time": 0.10, "quality": 0.01}
#: Metric name -> kind on a backend that measures (:data:`fps_profile.rows.metrics.METRICS`).
METRICS = gated()
_REL_EPS = 1e-9  # float noise of a JSON round trip is far below this

__all__ = ["DEFAULT_TOLERANCES", "GateReport", "KINDS", "METRICS", "compare", "metric_kind", "metric_value",
           "parse_tolerance", "select_metrics", "to_markdown"]


def metric_kind(metric: str, device: str) -> str:
    """``exact``, ``memory``, ``time``, ``count`` or ``breakdown`` for ``metric`` measured on ``device``:
    a backend that predicts (the sim) makes its byte figures exact."""
    from fps_profile.measure.backends import predicts

    entry = BY_NAME.get(metric.partition(".")[0])
    if entry is not None and entry.exact_on_predictions and predicts(device):
        return "exact"
    return METRICS[metric]


def parse_tolerance(text: str, tolerances: dict[str, float]) -> None:
    """Apply one ``--tolerance`` spec to ``tolerances`` (a dict of kind or metric -> fraction).

    ``10%`` sets both measured kinds (time and memory); ``time=20%``, ``memory=2%``,
    ``exact=1%`` set a kind; ``wall_time_s=30%`` sets one metric. The ``%`` is required.
    """
    target, sep, value = str(text).rpartition("=")
    frac = parse_percent(value, f"tolerance {text!r}:" if sep else "tolerance")
    if not sep:
        tolerances["time"] = tolerances["memory"] = frac
        return
    target = target.strip()
    if target not in DEFAULT_TOLERANCES and target not in METRICS:
        raise did_you_mean(target, list(DEFAULT_TOLERANCES) + list(METRICS), "tolerance kind or metric")
    if METRICS.get(target) in SHOWN_ONLY:
        raise UserError(f"{target} is shown when it changes but never gated")
    tolerances[target] = frac


def select_metrics(names: Iterable[str]) -> set[str]:
    """Metric names from a list of metric names and kinds (``exact`` expands to its metrics)."""
    out: set[str] = set()
    for name in names:
        if name in KINDS:
            out |= {m for m, k in METRICS.items() if k == name}
            if name == "exact":  # predicted bytes are exact
                out |= {m.name for m in BY_NAME.values() if m.exact_on_predictions}
        elif name in METRICS:
            out.add(name)
        else:
            raise did_you_mean(name, list(KINDS) + list(METRICS), "metric")
    return out


def fmt_value(metric: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if metric.endswith("_bytes") or metric.startswith("peak_breakdown_bytes."):
        return f"{fmt_bytes(value)} ({value:,})"
    if metric.endswith("_s"):
        return fmt_seconds(value) if value >= 1e-3 else f"{value:.3g} s"
    return f"{value:,}"


@dataclass
class Change:
    """One metric of one cell that differs between the two files.

    Attributes:
        key: The cell (:meth:`Result.key`).
        metric: Field name, or ``status``.
        old: Baseline value.
        new: Current value.
        verdict: ``worse`` (fails), ``within`` (worse but within tolerance), ``noise`` (worse
            beyond tolerance, but the repeats' intervals overlap), ``better``, ``changed``
            (counts, breakdown), ``missing`` (gone from CURRENT) or ``new``.
        tolerance: The tolerance it was judged with, for gated metrics.
    """

    key: tuple
    metric: str
    old: object
    new: object
    verdict: str
    tolerance: float | None = None

    @property
    def ratio(self) -> float | None:
        if isinstance(self.old, (int, float)) and isinstance(self.new, (int, float)):
            return self.new / self.old if self.old else (math.inf if self.new else 1.0)
        return None


@dataclass
class GateReport:
    """The outcome of :func:`compare`."""

    changes: list[Change] = field(default_factory=list)
    only_baseline: list[tuple] = field(default_factory=list)
    only_current: list[tuple] = field(default_factory=list)
    cells: int = 0
    metrics: int = 0
    labels: dict[tuple, str] = field(default_factory=dict)
    #: Device -> (why its times are noise, cells whose times were therefore not gated).
    untimed: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Environment facts that differ between the files (:func:`fps_profile.analysis.envdiff.differences`).
    env: list[str] = field(default_factory=list)

    def label(self, key: tuple) -> str:
        """The cell of ``key`` as :func:`fps_profile.rows.label.describe` names it."""
        return self.labels.get(key, str(key))

    @property
    def worse(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "worse"]

    def failed(self, strict: bool = False) -> bool:
        """True when a metric got worse beyond tolerance (or, with ``strict``, went missing)."""
        if self.worse:
            return True
        return strict and (bool(self.only_baseline) or any(c.verdict == "missing" for c in self.changes))


def _judge(old, new, tol: float | None, kind: str, differ: bool | None = None,
           direction: str = "lower") -> str | None:
    if new is None:
        return "missing"
    if old is None:
        return "new"
    if isinstance(new, str) or isinstance(old, str):
        return None if new == old else "changed"
    if math.isclose(new, old, rel_tol=_REL_EPS, abs_tol=0.0):
        return None
    if kind in SHOWN_ONLY:
        return "changed"
    if direction == "higher":  # judged as its negative: higher is better
        if new > old:
            return "better"
        return "worse" if new < old * (1 - tol) * (1 - _REL_EPS) else "within"
    if new < old:
        return "better"
    if new <= old * (1 + tol) * (1 + _REL_EPS):
        return "within"
    return "noise" if differ is False else "worse"


def compare(baseline: Sequence[Result], current: Sequence[Result], tolerances: dict[str, float] | None = None,
            metrics: set[str] | None = None) -> GateReport:
    """Compare ``current`` against ``baseline`` cell by cell.

    Args:
        baseline: Rows of the reference run.
        current: Rows of the run under test.
        tolerances: Fractions by kind (``exact``, ``memory``, ``time``) or metric
            name; missing entries take :data:`DEFAULT_TOLERANCES`.
        metrics: Only these metric names (default: all of :data:`METRICS`, but not the times of a
            backend whose times are noise: named here, they are gated too).

    Returns:
        Every change, and the cells found in one file only.
    """
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    wanted = [m for m in METRICS if metrics is None or m in metrics]
    old_rows, new_rows = latest(baseline), latest(current)  # the newest row of a key wins
    report = GateReport(only_baseline=[k for k in old_rows if k not in new_rows],
                        only_current=[k for k in new_rows if k not in old_rows],
                        labels={k: describe(r) for k, r in {**old_rows, **new_rows}.items()},
                        env=envdiff.differences(baseline, current))
    for key, old in old_rows.items():
        new = new_rows.get(key)
        if new is None:
            continue
        report.cells += 1
        if old.status != new.status:
            verdict = "worse" if old.status == "ok" else "better" if new.status == "ok" else "changed"
            report.changes.append(Change(key, "status", old.status, new.status, verdict))
        if old.status != "ok" or new.status != "ok":
            continue
        for metric in wanted:
            a, b = metric_value(old, metric), metric_value(new, metric)
            if a is None and b is None:
                continue
            kind = metric_kind(metric, old.device)
            if kind == "time" and metrics is None and _skip_time(report, old.device):
                continue
            limit = tol.get(metric, tol.get(kind))
            report.metrics += 1
            samples = BY_NAME[metric].samples if metric in BY_NAME else None
            differ = noise.differ(getattr(old, samples), getattr(new, samples)) if samples else None
            verdict = _judge(a, b, limit, kind, differ, better(metric))
            if verdict:
                report.changes.append(Change(key, metric, a, b, verdict, None if kind in SHOWN_ONLY else limit))
    return report


def _skip_time(report: GateReport, device: str) -> bool:
    """Whether ``device``'s times are noise (counted in ``report.untimed`` once per cell)."""
    from fps_profile.measure.backends import time_noise

    why = time_noise(device)
    if why is not None:
        report.untimed[device] = (why, report.untimed.get(device, (why, 0))[1] + 1)
    return why is not None


def _verdict_text(c: Change) -> str:
    if c.metric == "status":
        return "**WORSE**" if c.verdict == "worse" else c.verdict
    if c.verdict in ("worse", "within"):
        pct = "inf" if c.ratio == math.inf else f"{(c.ratio - 1) * 100:+.1f}%"
        if better(c.metric) == "higher":  # worse is down: -3.0% < -1%
            bound = f"{'<' if c.verdict == 'worse' else '>='} -{c.tolerance:.0%}"
        else:
            bound = f"{'>' if c.verdict == 'worse' else '<='} {c.tolerance:.0%}"
        return f"{'**WORSE**' if c.verdict == 'worse' else 'within tolerance'} ({pct} {bound})"
    if c.verdict == "noise":
        return (f"within noise ({(c.ratio - 1) * 100:+.1f}% > {c.tolerance:.0%}, but the repeats' confidence "
                "intervals overlap)")
    if c.verdict == "better" and c.ratio is not None:
        return f"better ({(c.ratio - 1) * 100:+.1f}%)"
    return {"missing": "missing in CURRENT", "new": "new in CURRENT"}.get(c.verdict, c.verdict)


def to_markdown(report: GateReport, strict: bool = False) -> str:
    """The report as markdown: a table of changes, cells in one file only, a verdict line."""
    lines = [f"Environments differ: {'; '.join(report.env)}", ""] if report.env else []
    if report.changes:
        lines += ["| cell | metric | old | new | ratio | verdict |", "| --- | --- | ---: | ---: | ---: | --- |"]
        for c in report.changes:
            ratio = "-" if c.ratio is None else ("inf" if c.ratio == math.inf else f"{c.ratio:.4f}")
            lines.append(f"| {report.label(c.key)} | {c.metric} | {fmt_value(c.metric, c.old)} | "
                         f"{fmt_value(c.metric, c.new)} | {ratio} | {_verdict_text(c)} |")
    else:
        lines.append(f"No metric changed ({report.metrics} compared in {report.cells} cells).")
    for title, keys in (("Cells only in BASELINE (not measured in CURRENT)", report.only_baseline),
                        ("Cells only in CURRENT (not in BASELINE)", report.only_current)):
        if keys:
            lines += ["", f"{title}: {len(keys)}", *(f"- {report.label(k)}" for k in keys)]
    for device, (why, cells) in sorted(report.untimed.items()):
        lines += ["", f"Time not gated on {device} ({cells} cells): {why}; memory is. Gate time there "
                      "too with --metric time (or --metric wall_time_s)."]
    worse = len(report.worse)
    counts = f"{report.metrics} metrics in {report.cells} cells compared, {len(report.changes)} changed, " \
             f"{worse} worse beyond tolerance"
    lines += ["", f"gate: {'FAIL' if report.failed(strict) else 'PASS'}: {counts}"
                  + (" (strict: missing cells or metrics fail)" if strict and not worse and report.failed(strict)
                     else "")]
    return "\n".join(lines)
