"""The cell schema: every axis of a measurement, declared once.

A *cell* is one measurement (one phase of one selector on one model, batch, dtype and
device, under some settings); a *row* is its result. Each :class:`Axis` below says
everything the rest of the package needs to know about one of a cell's fields:

* its name (the field of :class:`~fps_profile.rows.cell.Cell` and of the row: a results
  file's key, so never renamed), default and parser;
* how it joins the cell's identity (:func:`~fps_profile.rows.cell.cell_key`): a fixed slot,
  appended bare when set, ``(name, value)`` when not the default, or not at all. An axis
  added later joins only when set, so rows written before it keep their keys;
* how it shows in a label (:mod:`fps_profile.rows.label`);
* whether a sweep crosses it (a comma list on the command line, a list in TOML), its
  :class:`~fps_profile.run.grid.Grid` field, flag and help text.

Adding an axis (a knob) is one :class:`Axis` here plus the code that applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fps_profile.rows.values import (nonneg_int, parse_amp, parse_budget, parse_checkpointing,
                                      parse_dtype_name, parse_micro_batch, parse_offload,
                                      parse_trainer, positive_int, same)
from fps_profile.rows.sources import parse_data, parse_lr, parse_model, parse_seed, parse_weights, short

@dataclass(frozen=True)
class Axis:
    """One field of a cell.

    Attributes:
        name: Field name of the cell and the row (a results file's key: never renamed).
        default: The plain setting.
        parse: One value -> its canonical form (raises :class:`UserError`).
        key: ``"slot"`` (a fixed position of every key), ``"bare"`` (the value appended when
            set), ``"named"`` (``(name, value)`` appended when not the default) or ``"none"``.
        key_value: ``cell -> value`` for the key where it is not the field itself.
        label: ``value -> token`` of a label, for values other than the default.
        label_group: ``"model"`` (shown with the model, e.g. ``seq=512``), ``"who"`` (right after
            the series name, e.g. ``x8 batches``), ``"knob"`` (after those, e.g. ``+bf16``) or ``"cell"``
            (in a cell's full name only, not in its series: ``seed=1``, ``data=digits``).
        swept: A sweep crosses it: a comma list on the command line, a list in TOML.
        grid: The :class:`~fps_profile.run.grid.Grid` field holding it (plural when swept).
        flag: The ``sweep`` command-line flag, or None where the CLI sets it otherwise.
        in_row: Rows record it.
        grid_default: A :class:`~fps_profile.run.grid.Grid`'s value when none is given (default:
            ``[default]`` when swept, ``default`` otherwise).
        doc: What it means, for docstrings and ``--help``.
    """

    name: str
    default: Any = None
    parse: Callable[[Any], Any] = same
    key: str = "named"
    key_value: Callable[[Any], Any] | None = None
    label: Callable[[Any], str] | None = None
    label_group: str = "knob"
    swept: bool = False
    grid: str | None = None
    flag: str | None = None
    in_row: bool = True
    grid_default: Any = None
    doc: str = ""

    def value_for_key(self, cell) -> Any:
        return self.key_value(cell) if self.key_value else getattr(cell, self.name, self.default)

    def grid_value(self) -> Any:
        """A fresh :attr:`grid_default` (lists are never shared between grids)."""
        if callable(self.grid_default):
            return self.grid_default()
        if self.grid_default is not None:
            return list(self.grid_default) if isinstance(self.grid_default, (list, tuple)) else self.grid_default
        return [self.default] if self.swept else self.default

    @property
    def takes_text(self) -> bool:
        """Its values are names (selectors, models, devices ...): text, kept as given."""
        return self.parse is same

    @property
    def row_default(self) -> Any:
        """The value of a row written before this axis existed (or that leaves it unset)."""
        return False if isinstance(self.default, bool) else None


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


def _if_selector(name: str):
    from fps_profile.rows.phases import PHASES  # a phase's baselines (head, frozen) take no budget or scope

    return lambda c: getattr(c, name) if c.selector is not None and c.selector not in getattr(
        PHASES.get(c.phase), "baselines", ()) else None


def trainer_of(c):
    """The trainer where it means something: a ``train_step`` with a selector's mask (else None)."""
    from fps_profile.rows import phases

    trains = c.selector is not None and phases.get_phase(c.phase).trains_mask
    return getattr(c, "trainer", None) if trains else None


def _selection_batches(c):
    n = getattr(c, "num_batches", None)
    return int(n) if c.phase == "select" and n and int(n) > 1 else None


AXES: tuple[Axis, ...] = (
    Axis("selector", None, key="slot", key_value=lambda c: selector_variant(c.selector, c.options), swept=True,
         grid="selectors", flag="--selector", grid_default=("fps", "gps", "magnitude", "random"),
         doc="selector name; None for the inference floor, the train floor and full fine-tuning"),
    Axis("model", None, parse_model, key="slot", swept=True, grid="models", flag="--model",
         grid_default=("vit_tiny_patch16_224", "vit_small_patch16_224"),
         doc="timm model name, a language model hf:<name>, or your own: package.module:factory or file.py:factory"),
    Axis("batch_size", None, positive_int("batch size"), key="slot", swept=True, grid="batch_sizes",
         flag="--batch-size", grid_default=(1, 4, 16), doc="samples per batch"),
    Axis("dtype", "float32", parse_dtype_name, key="slot", swept=True, grid="dtypes", flag="--dtype",
         doc="float32, bfloat16 or float16"),
    Axis("device", "cpu", key="slot", swept=True, grid="devices", flag="--device",
         doc="cpu, cuda[:N] or sim[:target]"),
    Axis("phase", "select", key="slot", swept=True, grid="phases", flag="--phase",
         grid_default=("select", "inference", "train_step"), doc="what runs (fps_profile.rows.phases)"),
    Axis("budget", "k=1", parse_budget, key="slot", key_value=_if_selector("budget"), swept=True, grid="budget",
         doc="k=1 (per output row), fraction=0.01 (global) or shira:R (R*(m+n) entries of every ranked m x n "
         "tensor, PEFT SHiRA's size) for selection and sparse steps"),
    Axis("scope", "gps", key="slot", key_value=_if_selector("scope"), grid="scope", flag="--scope",
         doc="parameter scope of selection and sparse steps"),
    Axis("options", (), key="none", grid="options", grid_default=dict, doc="the selector's options (part of the "
                                                                           "selector's slot)"),
    Axis("image_size", None, positive_int("image size", optional=True), key="bare",
         label=lambda v: f"@{v}px", label_group="model", grid="image_size", flag="--image-size",
         doc="input height and width in pixels; none: the model's own (pretrained_cfg['input_size'])"),
    Axis("seq_len", None, positive_int("sequence length", optional=True), swept=True, grid="seq_lens", grid_default=(),
         label=lambda v: f"seq={v}", label_group="model", flag="--seq-len",
         doc="tokens per sequence of a language model (none: 512); none for image models"),
    Axis("amp", None, parse_amp, label=lambda v: f"+{v}", swept=True, grid="amp", flag="--amp",
         doc="autocast around every phase's passes: fp16, bf16 (a GradScaler for fp16 training), or "
         "fp16-nocache/bf16-nocache, which turn off autocast's cache of cast weight copies (kept for the whole "
         "autocast region, it can make a forward-only pass such as FPS need more memory than float32); "
         "none: plain"),
    Axis("checkpointing", False, parse_checkpointing, label=lambda v: "+ckpt", swept=True, grid="checkpointing",
         flag="--checkpointing", doc="activation checkpointing (timm's set_grad_checkpointing) for GPS, SNIP, the "
         "train step and the train floor: block activations are recomputed in the backward pass; on or off"),
    Axis("micro_batch", None, parse_micro_batch, label=lambda v: f"+mb{v}", swept=True, grid="micro_batch",
         flag="--micro-batch", doc="process every batch in chunks of M samples: FPS/Wanda statistics and "
         "GPS(CE)/SNIP gradients add up to the whole batch's (GPS's SupCon then pairs samples only inside a "
         "chunk, and its rows say so); the train step accumulates gradients over the chunks, inference is a "
         "chunked forward; none: whole batches"),
    Axis("num_batches", 1, positive_int("num_batches"), key_value=_selection_batches,
         label=lambda v: f"x{v} batches", label_group="who", grid="num_batches", flag="--num-batches",
         doc="selection batches one select run goes through (in the key above one, on select rows)"),
    Axis("trainer", "fps-profile", parse_trainer, key_value=trainer_of, label=lambda v: f"via {v}", label_group="who",
         swept=True, grid="trainers", flag="--trainer",
         doc="what trains a sparse train_step's mask: fps-profile (its in-place sparse step) or peft-shira (the "
         "same entries through Hugging Face PEFT's SHiRA adapter: a mask it can hold, e.g. budget shira:R, scope "
         "shira; needs peft); other phases and full fine-tuning ignore it"),
    Axis("weights", None, parse_weights, label=lambda v: f"weights={short(v)}", label_group="cell", swept=True,
         grid="weights", flag="--weights", doc="pretrained (timm's), a .safetensors/.pt/.pth/.bin state dict, or "
         "none (random initialisation)"),
    Axis("data", None, parse_data, label=lambda v: f"data={short(v)}", label_group="cell", swept=True, grid="data",
         flag="--data", doc="digits[:classes], an image folder, a .npz/.pt file or a .txt/.jsonl text file "
         "(optionally :classes), or none (synthetic inputs)"),
    Axis("seed", 0, parse_seed, label=lambda v: f"seed={v}", label_group="cell", swept=True, grid="seeds",
         flag="--seed", doc="seed of everything random in a cell: model init, data, splits, views, random scores"),
    Axis("steps", 100, positive_int("steps", optional=True), label=lambda v: f"steps={v}", label_group="cell",
         swept=True, grid="steps", flag="--steps", doc="fine-tuning steps of the finetune phase (None elsewhere)"),
    Axis("lr", 1e-3, parse_lr, label=lambda v: f"lr={v:g}", label_group="cell", swept=True, grid="lr", flag="--lr",
         doc="peak learning rate of the finetune phase's AdamW, cosine to 0 (None elsewhere)"),
    Axis("world_size", 1, positive_int("world size"), label=lambda v: f"ws={v}", label_group="who", swept=True,
         grid="world_sizes", flag="--world-size", doc="ranks the model is sharded over with FSDP2 (fully_shard on "
                                                      "every "
         "block and the root; batch_size is then per rank); 1: one plain process, no FSDP2"),
    Axis("offload", None, parse_offload, label=lambda v: f"+offload-{v}", swept=True, grid="offload",
         flag="--offload", doc="cpu: FSDP2's CPUOffloadPolicy (sharded parameters, gradients and optimizer state "
         "on the host; sharded even at world size 1); none: everything on the device"),
    Axis("warmup", 1, nonneg_int("warmup"), key="none", grid="warmup", flag="--warmup",
         doc="untimed runs before measuring"),
    Axis("repeats", 3, positive_int("repeats"), key="none", grid="repeats", flag="--repeats",
         doc="timed runs; the median is reported"),
    Axis("memory_budget", None, key="none", in_row=False, grid="memory_budget",
         doc="bytes; beyond them the run is an out-of-memory"),
)
BY_NAME: dict[str, Axis] = {a.name: a for a in AXES}
SWEPT: tuple[Axis, ...] = tuple(a for a in AXES if a.swept)
#: The knobs: swept settings every phase takes, crossed with everything else.
KNOBS: tuple[str, ...] = ("amp", "checkpointing", "micro_batch")


def register_axis(new: Axis) -> None:
    """Add an axis to :data:`AXES` (a plugin's knob), before anything builds cells.

    ``Cell``, ``Result`` and ``Grid`` are made from :data:`AXES` when their modules are first
    imported, so an axis must be registered before that (at the import of the plugin module).

    Raises:
        RuntimeError: Cells already exist, or an axis of that name does.
    """
    import sys

    global AXES, BY_NAME, SWEPT
    built = [m for m in ("fps_profile.rows.cell", "fps_profile.rows.result",
                         "fps_profile.run.grid") if m in sys.modules]
    if built:
        raise RuntimeError(f"register axis {new.name!r} before {built[0]} is imported (it is built from AXES)")
    if new.name in BY_NAME:
        raise RuntimeError(f"an axis {new.name!r} exists already")
    AXES = AXES + (new,)
    BY_NAME = {a.name: a for a in AXES}
    SWEPT = tuple(a for a in AXES if a.swept)


def axis(name: str) -> Axis:
    """The :data:`AXES` entry called ``name``."""
    return BY_NAME[name]


def label_tokens(cell, group: str) -> list[str]:
    """The label tokens of ``cell``'s axes in ``group`` (``"model"``, ``"who"``, ``"knob"`` or ``"cell"``), in
    axis order."""
    out = []
    for a in AXES:
        if a.label is None or a.label_group != group:
            continue
        value = a.value_for_key(cell) if a.key_value else getattr(cell, a.name, a.default)
        if value not in (None, False, a.default):
            out.append(a.label(value))
    return out


def knob_label(amp=None, checkpointing=False, micro_batch=None) -> str:
    """The knobs as a label suffix: ``""``, ``" +bf16"``, ``" +bf16 +ckpt +mb8"``."""
    values = {"amp": amp, "checkpointing": checkpointing, "micro_batch": micro_batch}
    return "".join(" " + axis(n).label(v) for n, v in values.items() if v not in (None, False))
