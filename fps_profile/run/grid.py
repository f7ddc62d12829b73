"""A grid: the cells a sweep measures, with one field per axis of the cell schema.

:class:`Grid`'s fields are derived from :data:`fps_profile.rows.schema.AXES`: a list for every
swept axis (``selectors``, ``models``, ``batch_sizes``, ``amp`` ...), one value for the others
(``scope``, ``warmup`` ...), and ``options`` (selector -> its options). Every cell is one value
of each list; :meth:`Grid.cells` crosses them.

Inference and full fine-tuning rows are measured once per (model, batch, dtype, device), not
per selector (the phase table says which phases take a selector); a phase's baselines
(``finetune``'s ``head`` and ``frozen``) come beside its selectors. A setting that cannot
change a cell is dropped from it, so the cell is measured once: checkpointing on a phase or
selector without a backward (inference, FPS, Wanda), any knob on a selector without data
(magnitude, random), a micro-batch at least the batch size. A grid with sequence lengths
takes language models only (``hf:``); without them a language model gets
:data:`fps_profile.models.hf.DEFAULT_SEQ_LEN`.
"""

from __future__ import annotations

import dataclasses
import itertools

from fps_profile.errors import UserError
from fps_profile.rows import phases as phase_table
from fps_profile.rows.cell import Cell
from fps_profile.rows import schema
from fps_profile.rows.schema import KNOBS, axis

#: Swept axes every cell takes one value of, outside the frame (device, dtype, model, sequence
#: length, batch) and the series (phase, selector): the knobs and any axis added after them.
_FRAME = ("selector", "model", "batch_size", "dtype", "device", "phase", "seq_len")


class _GridMethods:
    """What a :class:`Grid` does (its fields come from the schema)."""

    def settings(self) -> list[dict]:
        """Every combination of the swept axes outside the frame and the series, parsed, in order."""
        names = [a.name for a in schema.AXES if a.swept and a.name not in _FRAME]
        lists = [[axis(n).parse(v) for v in _as_list(getattr(self, axis(n).grid))] for n in names]
        out = [dict(zip(names, combo)) for combo in itertools.product(*lists)]
        return list({tuple(s.items()): s for s in out}.values())

    def knob_settings(self) -> list:
        """Every (amp, checkpointing, micro_batch) setting of the grid, as :class:`~fps_profile.knobs.Knobs`."""
        from fps_profile.knobs import Knobs

        return list(dict.fromkeys(Knobs(*(s[k] for k in KNOBS)) for s in self.settings()))

    def seq_lens_for(self, model: str) -> list[int | None]:
        """The sequence lengths of ``model``'s cells: ``[None]`` for an image model."""
        from fps_profile.models.hf import DEFAULT_SEQ_LEN, is_hf_name

        if not is_hf_name(model):
            return [None]
        return sorted(self.seq_lens) or [DEFAULT_SEQ_LEN]

    def series(self) -> list[tuple[str, str | None]]:
        """``(phase, selector)`` of every series, in phase-table order (selector None: none involved)."""
        what: list[tuple[str, str | None]] = []
        for name, phase in phase_table.PHASES.items():
            if name not in self.phases:
                continue
            if phase.selector in ("none", "optional"):
                what.append((name, None))
            what += [(name, b) for b in phase.baselines]
            if phase.selector in ("required", "optional"):
                what += [(name, s) for s in self.selectors]
        return what

    def cell(self, model: str, batch: int, dtype: str, device: str, phase: str, selector: str | None = None,
             setting: dict | None = None, seq_len: int | None = None) -> Cell:
        """One cell of the grid (``setting``: values of :meth:`settings`; default the first)."""
        setting = effective(setting or self.settings()[0], phase, selector, batch)
        opts = tuple(sorted(self.options.get(selector, {}).items())) if selector else ()
        scalars = {a.name: getattr(self, a.grid) for a in schema.AXES
                   if a.grid and not a.swept and a.name != "options"}
        return Cell(**{**scalars, **setting}, model=model, batch_size=batch, phase=phase, selector=selector,
                    dtype=dtype, device=device, options=opts, seq_len=seq_len)

    def cells(self) -> list[Cell]:
        """Every cell, grouped by (device, dtype, model, sequence length, batch): the phases in table
        order, each crossed with the settings (a cell two settings make alike comes once)."""
        unique: dict[tuple, Cell] = {}
        settings = self.settings()
        for device, dtype, model in itertools.product(self.devices, self.dtypes, self.models):
            for seq, batch in itertools.product(self.seq_lens_for(model), sorted(self.batch_sizes)):
                for (phase, selector), setting in itertools.product(self.series(), settings):
                    c = self.cell(model, batch, dtype, device, phase, selector, setting, seq)
                    unique.setdefault(c.key(), c)
        return list(unique.values())

    def validate(self, local_devices: bool = True) -> None:
        """Check every name and number before anything is measured (one-line errors).

        Args:
            local_devices: Check that CUDA devices exist here (False when an executor
                runs the cells on other machines).
        """
        from fps_profile.measure.backends import check_device
        from fps_profile.models import check_image_size
        from fps_profile.selection.scope import get_scope
        from fps_profile.selection.selectors import create, get

        for a in schema.AXES:
            if a.grid is None or a.name in ("options", "memory_budget"):
                continue
            values = getattr(self, a.grid)
            if a.swept:
                if not _as_list(values) and a.name not in ("seq_len", "selector"):
                    raise UserError(f"no {a.name.replace('_', ' ')} given")
                for v in _as_list(values):
                    a.parse(v)
            elif values is not None:
                a.parse(values)
        if not self.selectors and any(phase_table.get_phase(p).selector == "required" for p in self.phases):
            raise UserError("no selector given")
        phase_table.check(self.phases)
        for s in self.selectors:
            create(s, **self.options.get(s, {}))
        for s in self.options:
            get(s)
        from fps_profile.measure.inputs import check_sources

        for m, w, d in itertools.product(self.models, _as_list(self.weights), _as_list(self.data)):
            check_sources(m, axis("weights").parse(w), axis("data").parse(d))
        for d in self.devices:
            check_device(d, local=local_devices)
        get_scope(self.scope)
        check_image_size(self.image_size)
        self._validate_seq_lens()
        sizes, offload = axis("world_size").parse, axis("offload").parse
        if any(sizes(w) > 1 for w in _as_list(self.world_sizes)) or any(offload(o) for o in _as_list(self.offload)):
            from fps_profile.measure.distributed.checks import check_sharded

            for c in self.cells():
                check_sharded(c, local=local_devices)

    def _validate_seq_lens(self) -> None:
        from fps_profile.models.hf import check_name_seq_len, is_hf_name

        image = [m for m in self.models if not is_hf_name(m)]
        if self.seq_lens and image:
            raise UserError(f"--seq-len applies to language models (hf:...), not to image model {image[0]!r}: "
                            "sweep the two kinds separately")
        if self.image_size is not None and len(image) < len(self.models):
            lm = next(m for m in self.models if is_hf_name(m))
            raise UserError(f"--image-size applies to image models, not to language model {lm!r}: "
                            "sweep the two kinds separately")
        for m in self.models:
            if is_hf_name(m):
                check_name_seq_len(m, max(self.seq_lens_for(m)))


Grid = dataclasses.make_dataclass(
    "Grid", [(a.grid, object, dataclasses.field(default_factory=a.grid_value)) for a in schema.AXES if a.grid],
    bases=(_GridMethods,))
Grid.__module__ = __name__
Grid.__doc__ = "What a sweep measures: a list per swept axis, one value per other axis.\n\nAttributes:\n" + \
    "\n".join(f"    {a.grid}: {a.doc}" for a in schema.AXES if a.grid)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def effective(setting: dict, phase: str, selector: str | None, batch: int) -> dict:
    """``setting`` without the knobs that cannot change this cell (see the module docstring)."""
    from fps_profile.selection.selectors import get

    out = dict(setting)
    amp, ckpt, m = (out.get(k, axis(k).default) for k in KNOBS)
    if phase == "select":
        cls = get(selector)
        if not cls.needs_data:
            amp, ckpt, m = None, False, None
        ckpt = ckpt and cls.needs_backward
    ckpt = ckpt and phase != "inference"
    out.update(amp=amp, checkpointing=ckpt, micro_batch=None if m is not None and m >= batch else m)
    return out
