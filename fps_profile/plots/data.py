"""Rows to series: grouping, de-duplication and the per-batch values every figure plots.

Series names: a selector's name for its ``select`` rows, ``"floor"`` for the
``inference`` row, ``"full"`` for the ``train_step`` row without a selector and
``"train:floor"`` for the ``train_floor`` row.
Sparse fine-tuning rows (``train_step`` with a selector) are ``"train:<selector>"``. A selector run
with options is its own series, e.g. ``"gps[loss=ce,views=1]"`` (:attr:`Result.variant`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fps_profile.plots.style import FLOOR, FULL, TRAIN_FLOOR, sort_names
from fps_profile.rows.result import Result


def series_name(row: Result) -> str:
    """The series a row belongs to (see the module docstring); a row with knobs set
    (``amp``, ``checkpointing``, ``micro_batch``) is its own series, e.g. ``"gps +ckpt"``."""
    return _series(row) + row.knobs


def _series(row: Result) -> str:
    if row.phase == "inference":
        return FLOOR
    if row.phase == "train_step":
        return f"train:{row.variant}" if row.selector else FULL
    if row.phase == "train_floor":
        return TRAIN_FLOOR
    if row.phase == "finetune":  # never mixed with the selection of the same selector
        return f"finetune:{row.variant or FULL}"
    return row.variant or "?"


def device_label(row: Result) -> str:
    """The row's device, naming the GPU model for CUDA rows (``cuda:NVIDIA H100 80GB HBM3``).

    Mixed clusters measure the same cell on different GPUs; these must never be
    merged or drawn as one line.
    """
    name = row.env.get("device_name") if isinstance(row.env, dict) else None
    return f"{row.device}:{name}" if row.device.startswith("cuda") and name else row.device


# Knob fields (mixed precision, activation checkpointing, micro-batches) and their values when not set.
KNOBS = (("amp", None), ("checkpointing", False), ("micro_batch", None))


def knobs(row: Result) -> tuple:
    """The row's ``(amp, checkpointing, micro_batch)``; a row without these fields is plain ``(None, False, None)``."""
    return tuple(getattr(row, name, unset) or unset for name, unset in KNOBS)


def dedupe(rows: Iterable[Result]) -> list[Result]:
    """One row per cell and device model, the last one written winning (as a resumed sweep reads its file).

    Rows that differ only in a knob (:func:`knobs`) are different cells, whatever their key says.
    """
    return list({(r.key(), knobs(r), device_label(r)): r for r in rows}.values())


def by_group(rows: Iterable[Result], *, split_seq_len: bool = True) -> dict[tuple[str, str, str | None], list[Result]]:
    """Rows by ``(device, dtype, budget)``, in sorted order; rows are de-duplicated first.

    Where CUDA rows of one device string come from several GPU models (a mixed
    Ray cluster), the device is :func:`device_label`, so each model is its own group.

    The budget is None unless a (device, dtype) holds selections of several
    budgets (e.g. ``k=1`` and ``fraction=0.01``); then each budget is its own
    group, and the budget-less floor and full fine-tuning rows are in each.
    Likewise, where language-model rows hold several sequence lengths (and
    ``split_seq_len``), each is its own group, named ``seq=<n>`` in that place
    (``k=1 seq=<n>`` with a budget), rows without one in each.
    """
    out: dict[tuple[str, str, str | None], list[Result]] = {}
    by_dev: dict[tuple[str, str], list[Result]] = {}
    rows = dedupe(rows)
    names = {(r.device, r.dtype): set() for r in rows}
    for r in rows:
        names[(r.device, r.dtype)].add(device_label(r))
    for r in rows:
        # Split by GPU model only where one device string covers several (mixed clusters).
        device = device_label(r) if len(names[(r.device, r.dtype)]) > 1 else r.device
        by_dev.setdefault((device, r.dtype), []).append(r)
    for (device, dtype), group in by_dev.items():
        budgets = sorted({r.budget for r in group if r.budget is not None})
        parts = ([(None, group)] if len(budgets) <= 1
                 else [(b, [r for r in group if r.budget in (b, None)]) for b in budgets])
        for budget, part in parts:
            seqs = sorted({r.seq_len for r in part if r.seq_len}) if split_seq_len else []
            if len(seqs) <= 1:
                out[(device, dtype, budget)] = part
                continue
            for n in seqs:
                out[(device, dtype, f"{budget + ' ' if budget else ''}seq={n}")] = \
                    [r for r in part if r.seq_len in (n, None)]
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")))


def models(rows: Iterable[Result]) -> list[str]:
    """Models in order of size (``params_total``, then name)."""
    size: dict[str, int] = {}
    for r in rows:
        size[r.model] = max(size.get(r.model, 0), r.params_total or 0)
    return sorted(size, key=lambda m: (size[m], m))


@dataclass
class Series:
    """The rows of one series of one model, by batch size."""

    name: str
    rows: dict[int, Result]

    def xy(self, value: Callable[[Result], float | None]) -> tuple[list[int], list[float]]:
        """Batch sizes and values of the ``ok`` rows whose ``value`` is known, by batch."""
        xs, ys = [], []
        for b in sorted(self.rows):
            r = self.rows[b]
            v = value(r) if r.status == "ok" else None
            if v is not None:
                xs.append(b)
                ys.append(v)
        return xs, ys

    def batches(self, status: str) -> list[int]:
        """Batch sizes whose row has ``status`` (e.g. ``"oom"``)."""
        return sorted(b for b, r in self.rows.items() if r.status == status)


def series(rows: Sequence[Result], model: str, *, sparse: bool = False) -> dict[str, Series]:
    """The floor, each selector's selection, the train floor and full fine-tuning of ``model``, in drawing order.

    Args:
        rows: Rows of one (device, dtype) group.
        model: Which model.
        sparse: Include the sparse fine-tuning series ``"train:<selector>"`` too.
    """
    found: dict[str, dict[int, Result]] = {}
    for r in rows:
        if r.model != model:
            continue
        name = series_name(r)
        sparse_step = name.startswith("train:") and name != TRAIN_FLOOR
        if sparse_step and not sparse:
            continue
        found.setdefault(name, {})[r.batch_size] = r
    plain = sort_names(n for n in found if not n.startswith("train:") or n == TRAIN_FLOOR)
    trains = [f"train:{s}" for s in sort_names(n[6:] for n in found if n.startswith("train:") and n != TRAIN_FLOOR)]
    return {n: Series(n, found[n]) for n in plain + trains}


def peak(r: Result) -> int | None:
    """The peak memory every figure and table uses: live tensor bytes (allocated)."""
    return r.peak_allocated_bytes


def ratios(num: Series, den: Series | None, value: Callable[[Result], float | None] = peak):
    """``value(num) / value(den)`` at every batch where both are ``ok`` and known."""
    if den is None:
        return [], []
    nx, ny = num.xy(value)
    dx, dy = den.xy(value)
    d = dict(zip(dx, dy))
    pairs = [(x, y / d[x]) for x, y in zip(nx, ny) if d.get(x)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def device_memory_bytes(rows: Iterable[Result]) -> int | None:
    """The device's memory: the largest ``env.device_memory_bytes`` of the rows, else the sim target's."""
    rows = list(rows)
    known = [r.env.get("device_memory_bytes") for r in rows if isinstance(r.env, dict)]
    known = [int(k) for k in known if isinstance(k, (int, float)) and k > 0]
    if not known:
        known = [m for m in {_sim_target_memory(r.device) for r in rows if r.device.startswith("sim")} if m]
    return max(known) if known else None


def _sim_target_memory(device: str) -> int | None:
    try:
        from fps_profile.measure.targets import get_target

        return get_target(device).memory_bytes
    except Exception:  # no sim package here, or a target this version does not know: no memory line
        return None


def env_value(rows: Iterable[Result], key: str) -> str | None:
    """``env[key]`` of the rows: the one value, ``"a / b"`` when they differ, None when absent."""
    values = {str(r.env[key]) for r in rows if isinstance(r.env, dict) and r.env.get(key) is not None}
    if key == "git_commit":
        values = {short_commit(v) for v in values}
    values = sorted(values)
    return " / ".join(values) if values else None


def short_commit(commit: str) -> str:
    """``"2b2af2996f44...+dirty" -> "2b2af29+dirty"``."""
    head, plus, rest = commit.partition("+")
    return head[:7] + plus + rest
