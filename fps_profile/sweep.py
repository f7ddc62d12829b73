"""Sweeps: expand a grid into cells, skip what is measured, append rows as they come.

A sweep is resumable: cells whose key already has a row in the output are
skipped (``retry_failed`` re-measures rows with status ``error`` or ``timeout``;
the newest row of a key wins when reading). Each row is appended durably as
soon as it is measured, so a kill loses at most the cell in flight.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fps_profile import knobs
from fps_profile.errors import UserError
from fps_profile.knobs import Knobs
from fps_profile.results import PHASES, Result, append_result, read_results
from fps_profile.runner import Cell


@dataclass
class Grid:
    """Selectors x models x batch sizes x dtypes x devices, and how to measure each cell.

    ``options`` maps a selector name to its options. Inference and full
    fine-tuning rows are measured once per (model, batch, dtype, device), not
    per selector. ``image_size`` builds every model for that input size and feeds
    it images of that size (None: each model's own ``pretrained_cfg["input_size"]``).

    ``amp``, ``checkpointing`` and ``micro_batch`` are axes too (:mod:`fps_profile.knobs`;
    ``None``/``"none"``/``"off"`` is the plain setting): every cell is crossed with
    every setting. A setting that cannot change a cell is dropped from it, so the cell
    is measured once: checkpointing on a phase or selector without a backward
    (inference, FPS, Wanda), any knob on a selector without data (magnitude,
    random), a micro-batch at least the batch size.

    ``seq_lens`` are the sequence lengths of the language models (``hf:``), an axis
    like the batch sizes (empty: :data:`fps_profile.llm.models.DEFAULT_SEQ_LEN`); a grid
    with sequence lengths takes language models only.
    """

    selectors: list[str] = field(default_factory=lambda: ["fps", "gps", "magnitude", "random"])
    models: list[str] = field(default_factory=lambda: ["vit_tiny_patch16_224", "vit_small_patch16_224"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    phases: list[str] = field(default_factory=lambda: ["select", "inference", "train_step"])
    budget: str = "k=1"
    scope: str = "gps"
    options: dict[str, dict] = field(default_factory=dict)
    num_batches: int = 1
    warmup: int = 1
    repeats: int = 3
    memory_budget: int | None = None
    image_size: int | None = None
    amp: list = field(default_factory=lambda: [None])
    checkpointing: list = field(default_factory=lambda: [False])
    micro_batch: list = field(default_factory=lambda: [None])

    def knob_settings(self) -> list[Knobs]:
        """Every (amp, checkpointing, micro_batch) setting of the grid, parsed, in order."""
        axes = [_as_list(self.amp), _as_list(self.checkpointing), _as_list(self.micro_batch)]
        parsed = [[knobs.parse_amp(a) for a in axes[0]], [knobs.parse_checkpointing(c) for c in axes[1]],
                  [knobs.parse_micro_batch(m) for m in axes[2]]]
        return list(dict.fromkeys(Knobs(*s) for s in itertools.product(*parsed)))

    seq_lens: list[int] = field(default_factory=list)

    def _cell(self, model, batch, dtype, device, phase, selector=None, setting: Knobs | None = None,
              seq_len: int | None = None) -> Cell:
        opts = tuple(sorted(self.options.get(selector, {}).items())) if selector else ()
        setting = _effective(setting or self.knob_settings()[0], phase, selector, batch)
        return Cell(model=model, batch_size=batch, phase=phase, selector=selector, dtype=dtype, device=device,
                    budget=self.budget, scope=self.scope, options=opts, num_batches=self.num_batches,
                    warmup=self.warmup, repeats=self.repeats, memory_budget=self.memory_budget,
                    image_size=self.image_size, amp=setting.amp, checkpointing=setting.checkpointing,
                    micro_batch=setting.micro_batch, seq_len=seq_len)

    def seq_lens_for(self, model: str) -> list[int | None]:
        """The sequence lengths of ``model``'s cells: ``[None]`` for an image model."""
        from fps_profile.llm.models import DEFAULT_SEQ_LEN, is_hf_name

        if not is_hf_name(model):
            return [None]
        return sorted(self.seq_lens) or [DEFAULT_SEQ_LEN]

    def series(self) -> list[tuple[str, str | None]]:
        """``(phase, selector)`` of every series of the grid, in measuring order: the floor,
        selections, full and sparse train steps, the train floor (selector None: none involved)."""
        what: list[tuple[str, str | None]] = []
        if "inference" in self.phases:
            what.append(("inference", None))
        if "select" in self.phases:
            what += [("select", s) for s in self.selectors]
        if "train_step" in self.phases:
            what += [("train_step", None)] + [("train_step", s) for s in self.selectors]
        if "train_floor" in self.phases:
            what.append(("train_floor", None))
        return what

    def cells(self) -> list[Cell]:
        """Every cell, grouped by (device, dtype, model, sequence length, batch): floor, selections,
        train steps, each crossed with the knob settings (a cell that two settings make alike comes once)."""
        out = []
        settings = self.knob_settings()
        for device, dtype, model in itertools.product(self.devices, self.dtypes, self.models):
            for seq, batch in itertools.product(self.seq_lens_for(model), sorted(self.batch_sizes)):
                out += [self._cell(model, batch, dtype, device, phase, s, k, seq)
                        for phase, s in self.series() for k in settings]
        unique: dict[tuple, Cell] = {}
        for c in out:
            unique.setdefault(c.key(), c)
        return list(unique.values())

    def validate(self, local_devices: bool = True) -> None:
        """Check every name and number before anything is measured (one-line errors).

        Args:
            local_devices: Check that CUDA devices exist here (False when an executor
                runs the cells on other machines).
        """
        from fps_profile.devices import check_device
        from fps_profile.models import check_image_size, check_model_name, parse_dtype
        from fps_profile.phases import BudgetSpec
        from fps_profile.scope import get_scope
        from fps_profile.selectors import create, get

        for name, lst in (("selector", self.selectors), ("model", self.models), ("batch size", self.batch_sizes),
                          ("dtype", self.dtypes), ("device", self.devices), ("phase", self.phases)):
            if not lst and not (name == "selector" and set(self.phases) <= {"inference", "train_floor"}):
                raise UserError(f"no {name} given")
        for p in self.phases:
            if p not in PHASES:
                from fps_profile.errors import did_you_mean

                raise did_you_mean(p, PHASES, "phase")
        for s in self.selectors:
            create(s, **self.options.get(s, {}))
        for s in self.options:
            get(s)
        for m in self.models:
            check_model_name(m)
        for b in self.batch_sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise UserError(f"batch size must be an integer >= 1, not {b!r}")
        for d in self.dtypes:
            parse_dtype(d)
        for d in self.devices:
            check_device(d, local=local_devices)
        BudgetSpec.parse(self.budget)
        get_scope(self.scope)
        check_image_size(self.image_size)
        self.knob_settings()  # bad amp / checkpointing / micro_batch values fail here
        self._validate_seq_lens()
        for what, value in (("num_batches", self.num_batches), ("repeats", self.repeats)):
            if value < 1:
                raise UserError(f"{what} must be >= 1, not {value}")
        if self.warmup < 0:
            raise UserError(f"warmup must be >= 0, not {self.warmup}")

    def _validate_seq_lens(self) -> None:
        from fps_profile.llm.models import is_hf_name

        for n in self.seq_lens:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UserError(f"sequence length must be an integer >= 1, not {n!r}")
        image = [m for m in self.models if not is_hf_name(m)]
        if self.seq_lens and image:
            raise UserError(f"--seq-len applies to language models (hf:...), not to image model {image[0]!r}: "
                            "sweep the two kinds separately")
        if self.image_size is not None and len(image) < len(self.models):
            lm = next(m for m in self.models if is_hf_name(m))
            raise UserError(f"--image-size applies to image models, not to language model {lm!r}: "
                            "sweep the two kinds separately")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _effective(setting: Knobs, phase: str, selector: str | None, batch: int) -> Knobs:
    """``setting`` without the knobs that cannot change this cell (see :class:`Grid`)."""
    from fps_profile.selectors import get

    amp, ckpt, m = setting.amp, setting.checkpointing, setting.micro_batch
    if phase == "select":
        cls = get(selector)
        if not cls.needs_data:
            amp, ckpt, m = None, False, None
        ckpt = ckpt and cls.needs_backward
    ckpt = ckpt and phase != "inference"
    return Knobs(amp, ckpt, None if m is not None and m >= batch else m)


def latest(rows: Sequence[Result]) -> dict[tuple, Result]:
    """Rows by cell key; a later row of the same key replaces an earlier one."""
    return {r.key(): r for r in rows}


def check_output(path: Path) -> list[Result]:
    """Existing rows of ``path`` (validated) after checking it can be appended to."""
    if path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {str(parent)!r} does not exist")
    rows = read_results(path, missing_ok=True)
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise UserError(f"cannot write results to {str(path)!r}: permission denied")
    return rows


@dataclass
class SweepReport:
    """What a sweep did: every row of its grid (old and new), and counts."""

    rows: list[Result]
    measured: int
    skipped: int
    seconds: float


def _row_line(row: Result) -> str:
    from fps_profile.units import fmt_bytes, fmt_seconds

    who = row.variant or ("full" if row.phase == "train_step" else "floor")
    seq = f" seq={row.seq_len}" if row.seq_len else ""
    what = f"{row.model}{seq} b={row.batch_size} {row.dtype} {row.device} {row.phase}:{who}{row.knobs}"
    if row.status != "ok":
        return f"{what}  {row.status.upper()}  {row.error or ''}"
    return f"{what}  peak {fmt_bytes(row.peak_allocated_bytes)}  time {fmt_seconds(row.wall_time_s)}"


def run_sweep(grid: Grid, out: str | os.PathLike, *, executor=None, timeout_s: float | None = 1800.0,
              retry_failed: bool = False, progress: bool = True,
              on_row: Callable[[Result], None] | None = None) -> SweepReport:
    """Measure every cell of ``grid`` not yet in ``out``, appending rows as they come.

    Args:
        grid: What to measure (validated here first).
        out: JSON-lines results file; created if missing, resumed if present.
        executor: Where cells run (default: :class:`~fps_profile.executors.LocalExecutor`).
        timeout_s: Per-cell limit; a worker past it is killed and recorded as ``timeout``.
        retry_failed: Re-measure cells whose latest row is ``error`` or ``timeout``.
        progress: Show a progress bar with ETA (stderr) and one line per row.
        on_row: Called with each new row after it is written.

    Raises:
        UserError: A bad grid or output, before anything is measured.
    """
    from tqdm import tqdm

    from fps_profile.executors import LocalExecutor

    executor = executor or LocalExecutor()
    grid.validate(local_devices=not getattr(executor, "remote", False))
    path = Path(out)
    have = latest(check_output(path))
    cells = grid.cells()

    def done(cell: Cell) -> bool:
        row = have.get(cell.key())
        return row is not None and not (retry_failed and row.status in ("error", "timeout"))

    todo = [c for c in cells if not done(c)]
    start = time.perf_counter()
    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", file=sys.stderr,
               disable=not tty, dynamic_ncols=True, desc="sweep")
    produced = executor.run(todo, timeout_s)
    try:
        for i, row in enumerate(produced, start=1):
            append_result(path, row)
            have[row.key()] = row
            if tty:
                bar.write(_row_line(row), file=sys.stderr)
            elif progress:  # a log, not a terminal: plain lines with the ETA
                elapsed = time.perf_counter() - start
                eta = elapsed / i * (len(todo) - i)
                print(f"[{len(cells) - len(todo) + i}/{len(cells)} {elapsed:.0f}s, eta {eta:.0f}s] "
                      f"{_row_line(row)}", file=sys.stderr, flush=True)
            bar.update(1)
            if on_row:
                on_row(row)
    finally:
        if hasattr(produced, "close"):  # an interrupted sweep stops its executor's work now, not at garbage collection
            produced.close()
        bar.close()
    rows = [have[c.key()] for c in cells if c.key() in have]
    return SweepReport(rows=rows, measured=len(todo), skipped=len(cells) - len(todo),
                       seconds=time.perf_counter() - start)
