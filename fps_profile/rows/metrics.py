"""The metric table: every figure a row carries, its unit, and how the gate judges it.

Adding a row metric is one :class:`Metric` here plus the code that measures it: the row
gets the field, the gate compares it and tables format it by its unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ``peak_breakdown_bytes`` categories (the last two only where a backend has them).
BREAKDOWN_CATEGORIES = ("weights", "buffers", "inputs", "gradients", "optimizer_state", "mask", "activations",
                        "temporaries", "workspace", "allocator_slack")
#: ``peak_phase`` values.
PEAK_PHASES = ("forward", "backward", "optimizer", "scoring")
#: How the gate judges a kind: ``exact`` (deterministic: FLOPs, sim bytes) fails on any increase,
#: ``memory`` and ``time`` (measured) within a tolerance, ``quality`` (what fine-tuning reached:
#: accuracy, losses) on any change in its bad direction beyond a tolerance; ``count`` and
#: ``breakdown`` are shown when they change but never fail.
KINDS = ("exact", "memory", "time", "quality", "count", "breakdown")
SHOWN_ONLY = ("count", "breakdown")


@dataclass(frozen=True)
class Metric:
    """One figure of a row.

    Attributes:
        name: Field name (its unit in its suffix: ``_bytes``, ``_s``).
        kind: How the gate judges it (:data:`KINDS`); None: not gated (lists, records).
        unit: ``bytes``, ``s``, ``count``, ``fraction`` or None.
        better: ``"lower"`` or ``"higher"``.
        exact_on_predictions: On a backend that predicts rather than measures (the sim), the
            figure is deterministic and gated as ``exact``.
        default: The value of a row that lacks it.
        doc: What it means.
        samples: The row field holding every repeat this figure summarises (the gate tests
            whether two rows' repeats differ before calling a change worse).
        form: What a row holds (checked when a results file is read): ``number``, ``numbers`` (a
            list), ``numbers_by`` (name -> number), ``numbers_by_by`` (name -> name -> number),
            ``text`` or ``records`` (a list of objects).
    """

    name: str
    kind: str | None
    unit: str | None
    doc: str
    better: str = "lower"
    exact_on_predictions: bool = False
    default: Any = None
    samples: str | None = None
    form: str = "number"


METRICS: tuple[Metric, ...] = (
    Metric("peak_allocated_bytes", "memory", "bytes", "peak of live tensor bytes (CUDA allocator's "
           "max_memory_allocated; exact storage bytes on the CPU; predicted on sim)", exact_on_predictions=True),
    Metric("peak_reserved_bytes", "memory", "bytes", "CUDA max_memory_reserved (None elsewhere)",
           exact_on_predictions=True),
    Metric("nvml_peak_used_bytes", "memory", "bytes", "peak device memory used by everything on the GPU (NVML)"),
    Metric("nvml_process_peak_bytes", "memory", "bytes", "peak NVML figure for this process, where the driver "
           "gives one"),
    Metric("rss_peak_bytes", "memory", "bytes", "process resident-set high-water mark during the phase"),
    Metric("host_peak_bytes", "memory", "bytes", "with --offload cpu: peak bytes of the tensors the rank keeps in "
           "host memory (sharded parameters, gradients, optimizer state; predicted on sim), per rank",
           exact_on_predictions=True),
    Metric("wall_time_s", "time", "s", "median of wall_times_s (finetune rows: the time per step)",
           samples="wall_times_s"),
    Metric("wall_times_s", None, "s", "every timed repeat", default=list, form="numbers"),
    Metric("params_total", "count", "count", "parameters of the model"),
    Metric("params_trainable", "count", "count", "trainable parameters in this phase"),
    Metric("flops", "exact", "count", "floating-point operations of one run of the phase, where known"),
    Metric("time_floor_s", "exact", "s", "flops over the target device's peak rate, where known"),
    Metric("peak_breakdown_bytes", None, "bytes", "category -> bytes at the peak, summing to it "
           "(fps_profile.trackers.breakdown)", form="numbers_by"),
    Metric("peak_phase", "breakdown", None, "phase of the run at the peak: " + ", ".join(PEAK_PHASES), form="text"),
    Metric("peak_top_modules", None, None, "the largest holders at the peak: {module, category, bytes}",
           form="records"),
    Metric("peak_breakdown_by_phase", None, "bytes", "phase -> its own peak's breakdown", form="numbers_by_by"),
    Metric("peak_breakdown_run", None, None, "measured (cpu, sim) or extra (one more run: cuda)", form="text"),
    # The finetune phase (fps_profile.measure.finetune); None on the sim, which has no values.
    Metric("eval_accuracy", "quality", "fraction", "top-1 accuracy on the held-out split after fine-tuning "
           "(a language model: next-token accuracy)", better="higher"),
    Metric("eval_loss", "quality", None, "mean task loss (cross-entropy) on the held-out split after fine-tuning"),
    Metric("train_loss_final", "quality", None, "training loss of the last fine-tuning step"),
    Metric("examples_seen", "count", "count", "training samples the fine-tuning went through (steps x batch)"),
    Metric("select_peak_bytes", "memory", "bytes", "peak of the selection that made the fine-tuning mask "
           "(measured as the select phase measures it)", exact_on_predictions=True),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def gated() -> dict[str, str]:
    """Metric name -> kind for every figure the gate compares, breakdown categories included."""
    out = {m.name: m.kind for m in METRICS if m.kind is not None}
    out.update({f"peak_breakdown_bytes.{c}": "breakdown" for c in BREAKDOWN_CATEGORIES})
    return out


def metric_value(row, metric: str):
    """``row``'s value of ``metric``: a field, or ``peak_breakdown_bytes.<category>``."""
    field, _, category = metric.partition(".")
    value = getattr(row, field, None)
    if category:
        return value.get(category) if isinstance(value, dict) else None
    return value


def better(metric: str) -> str:
    """``"lower"`` or ``"higher"`` for a :func:`gated` metric name."""
    m = BY_NAME.get(metric.partition(".")[0])
    return m.better if m else "lower"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FORMS = {
    "number": (_number, "a number"),
    "numbers": (lambda v: isinstance(v, list) and all(map(_number, v)), "a list of numbers"),
    "numbers_by": (lambda v: isinstance(v, dict) and all(map(_number, v.values())), "an object of numbers"),
    "numbers_by_by": (lambda v: isinstance(v, dict) and all(isinstance(d, dict) and all(map(_number, d.values()))
                                                            for d in v.values()), "an object of objects of numbers"),
    "text": (lambda v: isinstance(v, str), "text"),
    "records": (lambda v: isinstance(v, list) and all(isinstance(d, dict) for d in v), "a list of objects"),
}


def figure_problem(name: str, value) -> str | None:
    """Why ``value`` cannot be the figure ``name`` of a row (None: it can, or ``name`` is no figure)."""
    m = BY_NAME.get(name)
    if m is None or value is None:
        return None
    ok, want = _FORMS[m.form]
    return None if ok(value) else f"field {name!r} must be {want}, not {value!r}"
