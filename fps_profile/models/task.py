"""Decoder language models (``hf:`` models): what the rest of the harness needs to know about them.

A language model's batch is ``(input_ids, labels)``: ``[batch, seq_len]`` token ids,
labels equal to the ids (the shift to next-token targets happens inside the loss,
as in Hugging Face ``transformers``). :func:`task_loss` is the one place where a
phase or a selector turns a batch into the training loss, for image classifiers
and language models alike. Building ``hf:`` models and their token batches:
:mod:`fps_profile.models.hf`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_causal_lm(model: nn.Module) -> bool:
    """True for a ``transformers`` causal language model (one with output embeddings and a config).

    The class or one of its bases is from ``transformers``: FSDP2 swaps a sharded
    model's class for a subclass defined in torch (``FSDPLlamaForCausalLM``).
    """
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and hasattr(model, "config") and any(
        c.__module__.startswith("transformers.") for c in type(model).__mro__)


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, or ``output.logits`` (``transformers``)."""
    return output if isinstance(output, torch.Tensor) else output.logits


def task_loss(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The fine-tuning loss of one batch.

    Image classifiers: cross-entropy of ``model(inputs)`` against class ``labels``.
    Causal language models: next-token cross-entropy computed by the model itself
    (``model(input_ids, labels=...)``, which upcasts the logits to float32 as every
    ``transformers`` training run does, so its memory is the one users pay);
    ``labels`` default to the inputs.
    """
    if is_causal_lm(model):
        return model(input_ids=inputs, labels=inputs if labels is None else labels).loss
    return F.cross_entropy(model(inputs), labels)
