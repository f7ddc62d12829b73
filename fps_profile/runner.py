"""One measurement: the body of every isolated worker process.

:func:`measure` does the work in the current process; the worker processes
(:mod:`fps_profile.forkserver` children and ``python -m fps_profile.worker``)
run it through :func:`measure_to_file`, started by
:func:`fps_profile.isolation.run_isolated`, which never lets one crash or hang
lose a row.

Protocol of one measurement: build the model and synthetic batches (and, for a
sparse train step, the selector's mask) outside any measured region; warm up;
one memory-tracked run; then ``repeats`` timed runs whose median is reported.
Memory and time are taken in separate runs so trackers never slow the timing.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fps_profile.results import Result, cell_key


@dataclass(frozen=True)
class Cell:
    """What to measure.

    Attributes:
        model: timm model name.
        batch_size: Images per batch.
        phase: ``select``, ``inference``, ``train_step`` or ``train_floor``.
        selector: Selector name; None for ``inference``, ``train_floor`` and full fine-tuning.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda[:N]`` or ``sim[:target]``.
        budget: ``k=1`` or ``fraction=0.01`` (selection phases only).
        scope: Parameter scope name.
        options: Selector options as sorted ``(key, value)`` pairs.
        num_batches: Batches of selection data.
        warmup: Untimed runs first.
        repeats: Timed runs.
        memory_budget: Bytes; beyond it the run is an out-of-memory (simulated on
            cpu/sim, enforced by the caching allocator on cuda).
        image_size: Input height and width; None: the model's own (``pretrained_cfg``).
        seq_len: Tokens per sequence of a language model (``hf:``); None for image models
            (a sweep sets it on every language-model cell, default
            :data:`fps_profile.llm.models.DEFAULT_SEQ_LEN`).
        amp: Autocast setting (:mod:`fps_profile.knobs`): ``fp16``, ``bf16``, their
            ``-nocache`` forms, or None.
        checkpointing: Activation checkpointing for the passes with a backward.
        micro_batch: Samples per chunk of every batch (None: whole batches).
    """

    model: str
    batch_size: int
    phase: str = "select"
    selector: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    budget: str | None = "k=1"
    scope: str = "gps"
    options: tuple = field(default_factory=tuple)
    num_batches: int = 1
    warmup: int = 1
    repeats: int = 3
    memory_budget: int | None = None
    image_size: int | None = None
    seq_len: int | None = None
    amp: str | None = None
    checkpointing: bool = False
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if self.phase in ("inference", "train_floor") or (self.phase == "train_step" and self.selector is None):
            object.__setattr__(self, "budget", None)
            object.__setattr__(self, "options", ())
        if self.phase == "inference":  # no backward: checkpointing changes nothing
            object.__setattr__(self, "checkpointing", False)

    def key(self) -> tuple:
        return cell_key(self.selector, self.model, self.batch_size, self.dtype, self.device,
                        self.phase, self.budget, self.scope, self.options, self.image_size,
                        self.amp, self.checkpointing, self.micro_batch, self.seq_len, self.num_batches)

    def label(self) -> str:
        from fps_profile.knobs import label

        who = self.selector or ("full" if self.phase == "train_step" else "-")
        size = f" {self.image_size}px" if self.image_size else ""
        size += f" seq={self.seq_len}" if self.seq_len else ""
        knobs = label(self.amp, self.checkpointing, self.micro_batch)
        return f"{self.model}{size} b={self.batch_size} {self.dtype} {self.device} {self.phase}:{who}{knobs}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Cell:
        data = json.loads(text)
        data["options"] = tuple(tuple(kv) for kv in data.get("options", ()))
        return cls(**data)

    def empty_row(self, **fields) -> Result:
        """A result row for this cell with nothing measured yet."""
        return Result(selector=self.selector, model=self.model, batch_size=self.batch_size,
                      dtype=self.dtype, device=self.device, phase=self.phase, budget=self.budget,
                      scope=self.scope if self.selector is not None else None, image_size=self.image_size,
                      amp=self.amp, checkpointing=self.checkpointing, micro_batch=self.micro_batch,
                      seq_len=self.seq_len, options=dict(self.options) or None, warmup=self.warmup,
                      repeats=self.repeats, **fields)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def measure(cell: Cell) -> Result:
    """Measure ``cell`` in this process (the worker's job; prefer :func:`fps_profile.isolation.run_isolated`).

    Never raises for a failed measurement: an out-of-memory becomes status
    ``oom``, any other exception status ``error`` with its message.
    """
    from fps_profile import env
    from fps_profile.knobs import note

    row = cell.empty_row(env=env.collect(cell.device))
    if cell.phase == "select":
        row.num_batches = cell.num_batches
    if note(cell):
        row.env["knobs_note"] = note(cell)
    try:
        if cell.device.startswith("sim"):
            from fps_profile.sim import measure_sim

            measure_sim(cell, row)
        else:
            _measure_real(cell, row)
    except Exception as exc:  # recorded as data, never lost
        row.status = "oom" if _is_oom(exc) else "error"
        row.error = one_line(exc)
    return row


def measure_to_file(cell_json: str, out_path: str | os.PathLike) -> None:
    """Measure a cell given as JSON and write its row atomically (body of every worker process)."""
    row = measure(Cell.from_json(cell_json))
    out = Path(out_path)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(row.to_json())
    os.replace(tmp, out)


def _measure_real(cell: Cell, row: Result) -> None:
    from fps_profile import phases
    from fps_profile.devices import resolve_device
    from fps_profile.mask import Mask
    from fps_profile.models import create_model, parse_dtype, synthetic_batches
    from fps_profile.sim.flops import FlopCount, time_floor
    from fps_profile.sim.targets import target_for_device_name
    from fps_profile.trackers import (CudaAllocatorPeak, LiveTensorBytes, NvmlSampler, RssPeak, limit_memory,
                                      median, time_repeats)
    from fps_profile.trackers.breakdown import PeakBreakdown, record_extra_run

    device = resolve_device(cell.device)
    torch.manual_seed(0)
    model = create_model(cell.model, device=device, dtype=parse_dtype(cell.dtype), image_size=cell.image_size)
    row.params_total = sum(p.numel() for p in model.parameters())
    batches = synthetic_batches(model, cell.batch_size, cell.num_batches, image_size=cell.image_size,
                                seq_len=cell.seq_len)
    if cell.memory_budget is not None and device.type == "cuda":
        limit_memory(device, cell.memory_budget)
    prepared = phases.prepare(cell, model, batches, _DeviceBackend(device))
    fn, row.params_trainable = prepared.fn, prepared.params_trainable
    del prepared

    for _ in range(cell.warmup):
        fn()
    optimizer = getattr(fn, "optimizer", None)
    if device.type == "cuda":
        with CudaAllocatorPeak(device) as cuda_peak, NvmlSampler(device.index or 0) as nvml, RssPeak() as rss:
            out = fn()
        row.peak_allocated_bytes, row.peak_reserved_bytes = cuda_peak.peak_allocated, cuda_peak.peak_reserved
        row.nvml_peak_used_bytes, row.nvml_process_peak_bytes = nvml.peak_used, nvml.peak_process
    else:
        # LiveTensorBytes is a dispatch mode already, so counting FLOPs in this run changes nothing.
        with FlopCount() as flop_count, LiveTensorBytes("cpu", budget_bytes=cell.memory_budget) as live, \
                RssPeak() as rss, PeakBreakdown(live, model, inputs=batches, optimizer=optimizer) as explained:
            out = fn()
        row.peak_allocated_bytes = live.peak
        explained.fill(row)
    row.rss_peak_bytes = rss.peak
    if isinstance(out, Mask):
        row.params_trainable = out.stats().trainable
    del out
    row.wall_times_s = time_repeats(fn, device, warmup=0, repeats=cell.repeats)
    row.wall_time_s = median(row.wall_times_s)
    if device.type == "cuda":
        # Any active dispatch mode changes eager choices (e.g. gradients accumulate out of
        # place), so on CUDA the FLOPs come from one more run, after everything is measured.
        with FlopCount() as flop_count:
            fn()
        target = target_for_device_name(torch.cuda.get_device_name(device))
        row.time_floor_s = time_floor(flop_count.counts, target.peak_flops) if target else None
        # The breakdown needs a dispatch mode too: one more, labelled run, whose failure leaves the row as it is.
        from fps_profile.sim.allocator import round_size

        try:
            record_extra_run(fn, model, inputs=batches, optimizer=optimizer, round_bytes=round_size).fill(row, "extra")
        except Exception as exc:  # noqa: BLE001
            row.env["breakdown_error"] = one_line(exc)
    row.flops = flop_count.total


class _DeviceBackend:
    """:class:`fps_profile.phases.Backend` on a real device (cpu, cuda)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def train_mask(self, model, batches, cell, budget, options):
        from fps_profile import phases

        mask = phases.select_fn(model, batches, cell.selector, budget, cell.scope, options)()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return mask

    def train_step(self, model, batch, mask, knobs):
        from fps_profile import phases

        return phases.train_step_fn(model, *batch, mask=mask, knobs=knobs)

    def select_trainable(self, model, budget, scope):
        return None  # counted on the mask the measured run returns
