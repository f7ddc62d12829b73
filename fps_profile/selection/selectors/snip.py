"""SNIP (Lee et al. 2019): connection sensitivity."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.knobs import chunks, weighted
from fps_profile.models.task import is_causal_lm, task_loss
from fps_profile.selection.selectors._gradients import cross_entropy, gradient_pass, take_grads
from fps_profile.selection.selectors.base import Batch, Selector, Target, check_labels
from fps_profile.selection.selectors.registry import register
from fps_profile.selection.sharding.tensors import local


@register("snip")
class SNIP(Selector):
    """|w_ij x dL/dw_ij| of the cross-entropy loss on the first batch(es).

    On a causal language model the loss is its next-token cross-entropy
    (:func:`fps_profile.models.task.task_loss`; labels default to the token ids).

    Args:
        num_batches: How many batches to accumulate the gradient over (SNIP: one).
    """

    needs_backward = True
    needs_labels = True
    handles_micro_batch = True

    def __init__(self, *, num_batches: int = 1) -> None:
        if int(num_batches) < 1:
            raise UserError(f"snip: num_batches must be >= 1, not {num_batches!r}")
        self.num_batches = int(num_batches)

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        with gradient_pass(model):
            for i, (images, labels) in enumerate(batches):
                if i == self.num_batches:
                    break
                lm = is_causal_lm(model)
                for x, y, share in chunks(images, labels if lm else check_labels(self, labels), self.micro_batch):
                    loss = task_loss(model, x, y) if lm else cross_entropy(model, x, y, self.name)
                    loss = weighted(loss, share)
                    loss.backward()
                    del loss
            self._grads = take_grads(targets, self.name)

    def score(self, target: Target) -> torch.Tensor:
        g = local(self._grads.pop(target.name))  # sharded (FSDP2): the rank's shard of the averaged gradient
        return g.mul_(local(target.param.detach())).abs_()

    def release(self) -> None:
        self._grads = {}
