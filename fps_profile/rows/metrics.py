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
#: ``memory`` and ``time`` (measured) within a tolerance; ``count`` and ``breakdown`` are shown
#: when they change but never fail.
KINDS = ("exact", "memory", "time", "count", "breakdown")
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
    """

    name: str
    kind: str | None
    unit: str | None
    doc: str
    better: str = "lower"
    exact_on_predictions: bool = False
    default: Any = None


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
    Metric("wall_time_s", "time", "s", "median of wall_times_s"),
    Metric("wall_times_s", None, "s", "every timed repeat", default=list),
    Metric("params_total", "count", "count", "parameters of the model"),
    Metric("params_trainable", "count", "count", "trainable parameters in this phase"),
    Metric("flops", "exact", "count", "floating-point operations of one run of the phase, where known"),
    Metric("time_floor_s", "exact", "s", "flops over the target device's peak rate, where known"),
    Metric("peak_breakdown_bytes", None, "bytes", "category -> bytes at the peak, summing to it "
           "(fps_profile.trackers.breakdown)"),
    Metric("peak_phase", "breakdown", None, "phase of the run at the peak: " + ", ".join(PEAK_PHASES)),
    Metric("peak_top_modules", None, None, "the largest holders at the peak: {module, category, bytes}"),
    Metric("peak_breakdown_by_phase", None, "bytes", "phase -> its own peak's breakdown"),
    Metric("peak_breakdown_run", None, None, "measured (cpu, sim) or extra (one more run: cuda)"),
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
