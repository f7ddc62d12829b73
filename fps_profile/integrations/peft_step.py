"""The ``train_step`` phase through PEFT SHiRA: the twin of :func:`fps_profile.measure.phases.train_step_fn`.

Same loss, backward, gradient clipping and AdamW (learning rate, weight decay) as
fps-profile's in-place sparse step; only the way the mask's entries are trained
differs. SHiRA keeps each Linear weight frozen and trains a delta vector; its
forward builds ``weight.clone() + sparse(delta)`` in every adapted layer, so a
dense copy of each adapted weight lives from that layer's forward until its
backward (autograd saves it for the input gradient). fps-profile's step writes
the trained entries into the weight in place and hands the layer the weight
itself (:mod:`fps_profile.selection.sparse`).

One difference in the optimisation itself: AdamW's weight decay here shrinks the
*delta* towards zero (the adapted entries towards their pretrained values), where
fps-profile's step shrinks the entries themselves towards zero, as full fine-tuning
does. With ``weight_decay=0`` the two steps compute the same update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fps_profile import knobs as _knobs
from fps_profile.knobs import Knobs
from fps_profile.selection.mask import Mask
from fps_profile.measure.phases import TrainStep


@dataclass
class PeftTrainStep(TrainStep):
    """A :class:`~fps_profile.measure.phases.TrainStep` whose model carries a SHiRA adapter.

    Attributes:
        peft_model: The ``peft.PeftModel`` (``model`` is its base model, whose Linear
            layers PEFT replaced in place; running it runs the adapter).
    """

    peft_model: Any = None


def peft_train_step_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: Mask,
                       lr: float = 1e-3, weight_decay: float = 0.05, knobs: Knobs = Knobs(),
                       partial: bool = False) -> PeftTrainStep:
    """One fine-tuning step training ``mask`` through a PEFT SHiRA adapter.

    Args:
        model: The plain model (wrapped in place by ``peft.get_peft_model``).
        images: The batch's inputs (images, or token ids for a language model).
        labels: The batch's labels.
        mask: The selection (:func:`fps_profile.integrations.peft.plan_shira` says
            what SHiRA can hold of it).
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay (on SHiRA's deltas: see the module docstring).
        knobs: Autocast, activation checkpointing and micro-batches, as for ``train_step``.
        partial: Train what SHiRA can hold and leave out the rest instead of failing.

    Returns:
        The step: call it to run forward, loss, backward, clipping and AdamW once.

    Raises:
        UserError: The mask does not convert (:func:`fps_profile.integrations.peft.plan_shira`).
    """
    from fps_profile.integrations.peft import to_shira

    model.train()
    if knobs.checkpointing:
        _knobs.enable_checkpointing(model)
    peft_model = to_shira(model, mask, partial=partial)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # The base model, not the PeftModel wrapper: the same layers, and task_loss recognises a
    # transformers language model by its class.
    return PeftTrainStep(peft_model.get_base_model(), images, labels, params, optimizer, knobs=knobs,
                         scaler=_knobs.grad_scaler(knobs.amp, images.device), peft_model=peft_model)
