"""Whether a row's peak fits the device it names: a predicted peak above the card is an ``oom``.

A real device cannot report a peak above its memory: it runs out first, and the row
is an ``oom``. A simulated card (``sim:<target>``) predicts the peak without running
out, so its backend judges the peak against the card (and ``--memory-budget``) with
:func:`mark_oom`, and keeps the predicted peak so the row shows how much was needed.
Rows written before that rule (``ok`` with a peak above ``env.device_memory_bytes``)
read as ``oom`` too (:func:`judge`, applied by :func:`fps_profile.rows.store.read_results`),
so every reader (summaries, reports, plots, the frontier, the gate, ``--max-batch``)
sees one status.
"""

from __future__ import annotations

from fps_profile.units import fmt_bytes


def device_memory(row) -> int | None:
    """The memory of the row's device as its ``env`` records it (None where unknown, e.g. ``cpu``, ``sim:cpu``)."""
    env = row.env if isinstance(row.env, dict) else {}
    value = env.get("device_memory_bytes")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def over(peak: int | None, limit: int | None) -> bool:
    """Whether ``peak`` bytes do not fit ``limit`` bytes (an unknown peak or limit fits)."""
    return peak is not None and limit is not None and peak > limit


def oom_message(device: str, peak: int, limit: int, what: str) -> str:
    """``predicted out of memory on sim:h100: peak 106.0 GiB (113,... bytes) allocated, over the card's 79.6 GiB
    (85,... bytes)``: one line, both figures exact."""
    return (f"predicted out of memory on {device}: peak {fmt_bytes(peak)} ({peak:,} bytes) allocated, "
            f"over {what} {fmt_bytes(limit)} ({limit:,} bytes)")


def mark_oom(row, peak: int, limit: int, what: str, device: str | None = None) -> None:
    """Make ``row`` an ``oom`` whose predicted ``peak`` exceeds ``limit`` (``what``: "the card's", "the budget of";
    ``device``: its name in the message, default the row's); its figures stay as predicted."""
    row.status = "oom"
    row.error = oom_message(device or row.device, peak, limit, what)


def judge(row):
    """``row``, made an ``oom`` if it is ``ok`` with a peak above its device's memory (a row written before
    :func:`mark_oom` existed); returns ``row``."""
    limit = device_memory(row)
    if row.status == "ok" and over(row.peak_allocated_bytes, limit):
        mark_oom(row, row.peak_allocated_bytes, limit, "the device's")
        row.error += " (read as oom: the row was written as ok)"
    return row
