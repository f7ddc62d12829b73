"""Result rows: small dataclasses with explicit units, stored as JSON lines.

One row is one measurement: one phase of one (selector, model, batch size,
dtype, device) cell. Field names ending in ``_bytes`` are bytes, ``_s`` seconds.
Appending is crash-safe: each row is written with a single ``write`` and
``fsync``; a reader ignores (and the next append trims) a torn last line.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fps_profile.errors import UserError

SCHEMA = "fps-profile/results/1"
PHASES = ("select", "inference", "train_step", "train_floor")
STATUSES = ("ok", "oom", "error", "timeout")
# ``peak_breakdown_bytes`` categories (the last two only where a backend has them) and ``peak_phase`` values.
BREAKDOWN_CATEGORIES = ("weights", "buffers", "inputs", "gradients", "optimizer_state", "mask", "activations",
                        "temporaries", "workspace", "allocator_slack")
PEAK_PHASES = ("forward", "backward", "optimizer", "scoring")


@dataclass
class Result:
    """One measurement.

    Attributes:
        selector: Selector name; None for the inference floor and full fine-tuning.
        model: timm model name.
        batch_size: Images per batch.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        device: ``cpu``, ``cuda``/``cuda:N``, or ``sim``/``sim:<target>``.
        phase: ``select``, ``inference`` or ``train_step``.
        status: ``ok``, ``oom``, ``error`` or ``timeout``.
        budget: ``k=1`` or ``fraction=0.01`` for select and sparse train_step rows, else None.
        scope: Parameter scope of select and sparse train_step rows, else None.
        image_size: Input height and width when set by ``--image-size``; None: the model's own
            (``pretrained_cfg["input_size"]``).
        seq_len: Tokens per sequence of a language-model (``hf:``) row; None for image models.
        amp: ``fp16``/``bf16`` (or ``fp16-nocache``/``bf16-nocache``) when the phase ran under
            autocast (``--amp``); None: plain.
        checkpointing: Whether activation checkpointing was on (``--checkpointing``).
        micro_batch: Samples per chunk when each batch was processed in micro-batches
            (``--micro-batch``); None: whole batches. These three join the cell key only
            when set, so rows written before them keep their keys.
        options: The selector's options where any were given (e.g. ``{"loss": "ce", "views": 1}``
            for GPS's cross-entropy variant), else None; part of the cell's identity.
        peak_allocated_bytes: Peak of live tensor bytes (CUDA allocator's
            ``max_memory_allocated``; exact storage bytes on the CPU; predicted on sim).
        peak_reserved_bytes: CUDA ``max_memory_reserved`` (None elsewhere).
        nvml_peak_used_bytes: Peak device memory used by everything on the GPU (NVML).
        nvml_process_peak_bytes: Peak NVML figure for this process, where the driver gives one.
        rss_peak_bytes: Process resident-set high-water mark during the phase.
        wall_time_s: Median of ``wall_times_s``.
        wall_times_s: Every timed repeat, seconds.
        num_batches: Selection batches one ``select`` run goes through (so it sees ``batch_size x
            num_batches`` images); None on other phases and on rows written before it was recorded (one).
            Part of the key when above one.
        params_total: Parameters of the model (count).
        params_trainable: Trainable parameters in this phase (count).
        flops: Floating-point operations of one run of the phase (count), where known.
        time_floor_s: ``flops`` over the target device's peak rate (seconds), where known.
        peak_breakdown_bytes: What the bytes at the peak are: category (``weights``, ``buffers``,
            ``inputs``, ``gradients``, ``optimizer_state``, ``mask``, ``activations``, ``temporaries``,
            and ``workspace`` on sim) -> bytes, summing to the peak of the run it was taken in
            (:mod:`fps_profile.trackers.breakdown`); None where not recorded.
        peak_phase: Phase of the run at the peak: ``forward``, ``backward``, ``optimizer`` or ``scoring``.
        peak_top_modules: The largest holders at the peak, largest first: ``{"module", "category",
            "bytes"}`` each (a module path, or a name in parentheses such as ``(inputs)``).
        peak_breakdown_by_phase: Phase -> its own peak's breakdown (category -> bytes).
        peak_breakdown_run: ``measured`` (taken in the measured run: cpu, sim) or ``extra``
            (one more run with a dispatch-mode tracker after everything else: cuda).
        error: Message for a status other than ``ok``.
        env: Versions, git commit, device, driver, CPU, host.
    """

    selector: str | None
    model: str
    batch_size: int
    dtype: str
    device: str
    phase: str
    status: str = "ok"
    budget: str | None = None
    scope: str | None = None
    image_size: int | None = None
    seq_len: int | None = None
    amp: str | None = None
    checkpointing: bool = False
    micro_batch: int | None = None
    options: dict[str, Any] | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    nvml_peak_used_bytes: int | None = None
    nvml_process_peak_bytes: int | None = None
    rss_peak_bytes: int | None = None
    wall_time_s: float | None = None
    wall_times_s: list[float] = field(default_factory=list)
    warmup: int | None = None
    repeats: int | None = None
    num_batches: int | None = None
    params_total: int | None = None
    params_trainable: int | None = None
    flops: int | None = None
    time_floor_s: float | None = None
    peak_breakdown_bytes: dict[str, int] | None = None
    peak_phase: str | None = None
    peak_top_modules: list[dict[str, Any]] | None = None
    peak_breakdown_by_phase: dict[str, dict[str, int]] | None = None
    peak_breakdown_run: str | None = None
    error: str | None = None
    timestamp: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    env: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    def key(self) -> tuple:
        """Identity of the cell this row measures (resume and comparison key)."""
        return cell_key(self.selector, self.model, self.batch_size, self.dtype, self.device, self.phase,
                        self.budget, self.scope, self.options, self.image_size, self.amp, self.checkpointing,
                        self.micro_batch, self.seq_len, self.num_batches)

    @property
    def variant(self) -> str | None:
        """The selector with its options, e.g. ``gps[loss=ce,views=1]`` (see :func:`selector_variant`)."""
        return selector_variant(self.selector, self.options)

    @property
    def knobs(self) -> str:
        """The knob settings as a label suffix: ``""`` when plain, e.g. ``" +bf16 +ckpt +mb8"``."""
        from fps_profile.knobs import label

        return label(self.amp, self.checkpointing, self.micro_batch)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("model", "batch_size", "dtype", "device", "phase") if n not in data]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        return cls(**{k: v for k, v in data.items() if k in known})


def selector_variant(selector: str | None, options=None) -> str | None:
    """``"gps"`` without options, ``"gps[loss=ce,views=1]"`` with them (sorted by name).

    Args:
        selector: Selector name, or None.
        options: A dict or ``(key, value)`` pairs.
    """
    items = sorted(dict(options or {}).items())
    if selector is None or not items:
        return selector
    return f"{selector}[{','.join(f'{k}={v}' for k, v in items)}]"


def cell_key(selector, model, batch_size, dtype, device, phase, budget, scope=None, options=None,
             image_size=None, amp=None, checkpointing=False, micro_batch=None, seq_len=None,
             num_batches=None) -> tuple:
    """Identity of a cell. Budget, scope and options only matter where a selector is involved;
    options are folded into the selector (:func:`selector_variant`); an image size, a sequence
    length and the knobs (``amp``, ``checkpointing``, ``micro_batch``) are part of the key only
    when set, and the number of selection batches only on a ``select`` row that goes through
    more than one, so rows written before they existed keep their keys."""
    if selector is None:
        budget = scope = None
    key = (selector_variant(selector, options), model, int(batch_size), dtype, device, phase, budget, scope)
    key = key + (int(image_size),) if image_size else key
    key += (("seq_len", int(seq_len)),) if seq_len else ()
    knobs = (("amp", amp),) if amp else ()
    knobs += (("checkpointing", True),) if checkpointing else ()
    knobs += (("micro_batch", int(micro_batch)),) if micro_batch else ()
    many = phase == "select" and num_batches and int(num_batches) > 1
    return key + knobs + ((("num_batches", int(num_batches)),) if many else ())


def _trim_torn_tail(path: Path) -> None:
    """Drop a last line that lacks its newline (a write cut short by a kill)."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        f.seek(size - block)
        tail = f.read(block)
        cut = tail.rfind(b"\n")
        f.truncate(size - block + cut + 1 if cut >= 0 else 0)


def append_result(path: str | os.PathLike, result: Result) -> None:
    """Append one row durably (single write, then fsync)."""
    path = Path(path)
    line = (result.to_json() + "\n").encode()
    try:
        if path.exists():
            _trim_torn_tail(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write results to {str(path)!r}: {exc.strerror or exc}") from exc


def read_results(path: str | os.PathLike, *, missing_ok: bool = False) -> list[Result]:
    """Every row of a results file.

    Raises:
        UserError: Missing file (unless ``missing_ok``), a malformed line, or a
            row of another schema.
    """
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise UserError(f"results file {str(path)!r} does not exist")
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a directory, not a results file")
    rows = []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    # The last element is b"" after a final newline, or a torn line cut short by a kill: skip it.
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            schema = obj.get("schema")
            if schema != SCHEMA:
                raise UserError(
                    f"{str(path)}:{number}: row of schema {schema!r}, expected {SCHEMA!r} "
                    "(a results file from another tool or version)"
                )
            rows.append(Result.from_dict(obj))
        except UserError:
            raise
        except (ValueError, TypeError) as exc:
            raise UserError(f"{str(path)}:{number}: not a valid results row ({exc})") from None
    return rows


def write_results(path: str | os.PathLike, results: Iterable[Result]) -> None:
    """Write a whole results file atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w") as f:
            for r in results:
                f.write(r.to_json() + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write results to {str(path)!r}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
