"""One way to name a row or a cell, used by every table, figure, log line and report.

* :func:`series` - what was measured, without the model: ``fps``, ``floor``, ``train:full``,
  ``train:fps``, ``train:floor``, ``gps[loss=ce,views=1] x8 batches +bf16 +ckpt``. The phase
  table (:mod:`fps_profile.rows.phases`) gives the name, the schema's axes the tokens.
* :func:`model_label` - the model with the axes shown beside it: ``vit_base_patch16_224 @384px``,
  ``hf:llama-3.2-1b seq=2048``.
* :func:`describe` - everything: ``vit_tiny_patch16_224 b=16 float32 cpu fps``, with the budget
  and scope where they are not the defaults.

Each takes a :class:`~fps_profile.rows.cell.Cell` or a row alike (they share the axis fields).
"""

from __future__ import annotations

from fps_profile.rows import phases
from fps_profile.rows.schema import axis, label_tokens, selector_variant


def who(obj) -> str:
    """The phase's series name for ``obj``'s selector: ``fps``, ``floor``, ``train:full``, ..."""
    return phases.get_phase(obj.phase).series(selector_variant(obj.selector, obj.options)) or "-"


def series(obj) -> str:
    """:func:`who`, then the ``who`` tokens (``x8 batches``), then the knobs (``+bf16 +ckpt +mb8``)."""
    return " ".join([who(obj), *label_tokens(obj, "who"), *label_tokens(obj, "knob")])


def knobs(obj) -> str:
    """The knob tokens alone as a suffix: ``""`` or ``" +bf16 +ckpt"``."""
    return "".join(" " + t for t in label_tokens(obj, "knob"))


def model_label(obj) -> str:
    """The model with its size and sequence length: ``vit_base_patch16_224 @384px``, ``hf:x seq=512``."""
    return " ".join([obj.model, *label_tokens(obj, "model")])


def describe(obj) -> str:
    """``model [@Npx] [seq=N] b=B dtype device series [budget] [scope=...] [data=... seed=N ...]``: the full
    name of a cell (the axes of the ``cell`` label group last: where the inputs came from, the seed, the
    fine-tuning settings)."""
    parts = [model_label(obj), f"b={obj.batch_size}", obj.dtype, obj.device, series(obj)]
    if phases.takes_selector(obj.phase, obj.selector):
        budget, scope = getattr(obj, "budget", None), getattr(obj, "scope", None)
        if budget not in (None, axis("budget").default):
            parts.append(budget)
        if scope not in (None, axis("scope").default):
            parts.append(f"scope={scope}")
    parts += label_tokens(obj, "cell")
    return " ".join(str(p) for p in parts)
