"""The knobs a practitioner short of memory turns: mixed precision, activation
checkpointing and micro-batches, for every phase (selection, inference, train step).

``amp``            ``fp16`` / ``bf16``: autocast around the phase's forward (and backward) passes.
                   Autocast keeps the low-precision copy of every weight it casts for the
                   whole autocast region (``cache_enabled``): those copies stay alive until
                   the region ends, so a forward-only pass (FPS, inference) can need *more*
                   memory than in float32. ``fp16-nocache`` / ``bf16-nocache`` turn the cache
                   off: every use casts again, and each copy is freed after its op.
``checkpointing``  timm's ``set_grad_checkpointing(True)`` (a Hugging Face model's
                   ``gradient_checkpointing_enable()``): block activations are recomputed in
                   the backward pass instead of kept. Only passes with a backward change.
``micro_batch``    every batch is processed in chunks of that many samples; losses of
                   mean-reduced chunks are weighted by chunk size / batch size, so gradients
                   and statistics add up to those of the whole batch (up to float rounding).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.rows.values import AMP_CHOICES, parse_amp, parse_checkpointing, parse_micro_batch
from fps_profile.rows.schema import knob_label

__all__ = ["AMP_CHOICES", "Knobs", "amp_dtype", "autocast", "checkpointing", "chunks", "cpu_amp_problem",
           "enable_checkpointing", "grad_scaler", "note", "parse_amp", "parse_checkpointing", "parse_micro_batch",
           "SELECT_TOKENS", "sequences_per_chunk", "token_chunk", "weighted"]
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Knobs:
    """The three settings of one cell (all off by default)."""

    amp: str | None = None
    checkpointing: bool = False
    micro_batch: int | None = None

    @classmethod
    def of(cls, cell) -> Knobs:
        """The knobs of a cell or row (one without the fields has them off)."""
        return cls(parse_amp(getattr(cell, "amp", None)), bool(getattr(cell, "checkpointing", False)),
                   parse_micro_batch(getattr(cell, "micro_batch", None)))

    def label(self) -> str:
        """These settings as a label suffix: ``""`` or ``" +bf16 +ckpt +mb8"``."""
        return knob_label(self.amp, self.checkpointing, self.micro_batch)


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting (None when off)."""
    amp = parse_amp(amp)
    return _DTYPES[amp.split("-")[0]] if amp else None


def cpu_amp_problem(amp: str | None) -> str | None:
    """Why this CPU's kernels cannot run ``amp`` autocast, or None when they can.

    ATen packs bf16 (fp16) operands for AMX's tile units wherever oneDNN reports AMX
    (``cpublas::could_pack``, e.g. in the CPU flash-attention kernel), but only its AVX-512
    kernel set has the packing code (``pack_vnni2``): the other sets raise "pack_vnni2 is
    only supported when avx512 is supported". That happens when ``ATEN_CPU_CAPABILITY``
    forces ``default`` or ``avx2`` on an AMX CPU while oneDNN still uses AMX. A real CPU
    without AVX-512 has no AMX either, so it never packs and is not affected.
    """
    dtype = amp_dtype(amp)
    if dtype is None:
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512") or not (torch.backends.mkldnn.is_available() and
                                               torch.backends.mkldnn.enabled):
        return None
    amx = torch.cpu._is_amx_fp16_supported() if dtype is torch.float16 else torch.cpu._is_amx_tile_supported()
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not amx or (onednn_cap not in ("ALL", "DEFAULT") and "AMX" not in onednn_cap):
        return None
    return (f"--amp {amp} cannot run on this CPU's kernels: ATen dispatches its {capability} kernels "
            f"(ATEN_CPU_CAPABILITY) while oneDNN packs {str(dtype).removeprefix('torch.')} for AMX, which only the "
            "AVX-512 kernels can; unset ATEN_CPU_CAPABILITY or also set ONEDNN_MAX_CPU_ISA=AVX2")


def autocast(amp: str | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` on ``device``'s type (a no-op when ``amp`` is None).

    The sim runs on fake CPU tensors, so it gets CPU autocast, whose CUDA
    differences :mod:`fps_profile.sim.policy` puts back.

    Raises:
        UserError: Real CPU kernels that cannot run this autocast (:func:`cpu_amp_problem`).
    """
    amp = parse_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind == "cpu" and torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None:
        problem = cpu_amp_problem(amp)
        if problem:
            raise UserError(problem)
    return torch.autocast(device_type=kind, dtype=_DTYPES[amp.split("-")[0]],
                          cache_enabled=not amp.endswith("-nocache"))


def grad_scaler(amp: str | None, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 training (None for bf16 or no amp: their range needs none)."""
    if amp_dtype(amp) is not torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def enable_checkpointing(model: nn.Module) -> None:
    """Turn activation checkpointing on: timm's ``set_grad_checkpointing(True)``, or a
    Hugging Face model's ``gradient_checkpointing_enable()``.

    Raises:
        UserError: The model has neither, or refuses it (some timm families assert).
    """
    name = type(model).__name__
    timm_hook = getattr(model, "set_grad_checkpointing", None)
    hf_hook = getattr(model, "gradient_checkpointing_enable", None)
    try:
        if callable(timm_hook):
            timm_hook(True)
        elif callable(hf_hook):
            hf_hook()
        else:
            raise UserError(f"{name} has no activation checkpointing (timm's set_grad_checkpointing or "
                            "transformers' gradient_checkpointing_enable): run it without --checkpointing")
    except (AssertionError, NotImplementedError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{name} does not support activation checkpointing ({exc or type(exc).__name__}): "
                        "run it without --checkpointing") from None


@contextlib.contextmanager
def checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Activation checkpointing inside the block (:func:`enable_checkpointing`), the model's
    own setting restored after (timm keeps it in ``grad_checkpointing`` attributes; a
    Hugging Face model in ``is_gradient_checkpointing``)."""
    if not enabled:
        yield
        return
    saved = [(m, m.grad_checkpointing) for m in model.modules()
             if isinstance(getattr(m, "grad_checkpointing", None), bool)]
    hf_was = getattr(model, "is_gradient_checkpointing", None)
    enable_checkpointing(model)
    try:
        yield
    finally:
        for m, flag in saved:
            m.grad_checkpointing = flag
        if hf_was is False and callable(getattr(model, "gradient_checkpointing_disable", None)):
            model.gradient_checkpointing_disable()


def chunks(inputs: torch.Tensor, labels: torch.Tensor | None,
           micro_batch: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, float]]:
    """Split one batch into micro-batches along its first dimension.

    Yields:
        ``(inputs, labels, weight)`` per chunk (views, no copies); ``weight`` is the
        chunk's share of the batch, by which a mean-reduced chunk loss is multiplied
        so the chunk gradients add up to the whole batch's. Without ``micro_batch``
        (or one at least the batch) the batch itself, weight 1.
    """
    n = inputs.shape[0]
    if micro_batch is None or micro_batch >= n:
        yield inputs, labels, 1.0
        return
    for start in range(0, n, micro_batch):
        stop = min(start + micro_batch, n)
        yield inputs[start:stop], None if labels is None else labels[start:stop], (stop - start) / n


#: Most tokens one selection forward of a language model reads when no ``micro_batch`` is given.
#: The statistics are sums over tokens, so whole sequences in chunks give the same sums (up to float
#: rounding) while only one chunk's activations are alive (4 x 8,192 tokens through one MLP of
#: Llama-3.1-8B hold 3.6 GiB of bfloat16 activations at once; chunks of 16,384 tokens half that).
SELECT_TOKENS = 16_384


def token_chunk(x: torch.Tensor) -> int | None:
    """Sequences per forward of a forward-only selection (FPS, Wanda, GD-FPS) without a
    ``micro_batch``, for a batch ``x`` of token ids ``[batch, seq]`` of more than
    :data:`SELECT_TOKENS` tokens: whole sequences, at least one. None for any other input
    (images and batches within the budget run whole)."""
    if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool or x.numel() <= SELECT_TOKENS:
        return None
    return sequences_per_chunk(x.shape[1])


def sequences_per_chunk(seq_len: int) -> int:
    """Whole sequences of ``seq_len`` tokens in one chunk of :func:`token_chunk` (at least one)."""
    return max(1, SELECT_TOKENS // seq_len)


def weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
    """``loss * weight``, without an op when the weight is 1."""
    return loss if weight == 1.0 else loss * weight


def note(cell) -> str | None:
    """What a row with these knobs must say about itself, or None: GPS's SupCon loss
    in micro-batches is not the whole batch's loss (pairs only inside a chunk)."""
    m = parse_micro_batch(getattr(cell, "micro_batch", None))
    if (getattr(cell, "phase", None) == "select" and getattr(cell, "selector", None) == "gps" and m
            and m < cell.batch_size and dict(cell.options).get("loss", "supcon") == "supcon"):
        return (f"micro_batch {m}: GPS's SupCon loss pairs samples only inside each chunk of {m}, so it "
                "differs from the whole-batch loss (the mask may differ too)")
    return None
