"""GPS: Gradient-based Parameter Selection (Zhang et al., CVPR 2024)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from fps_profile.selection.sharding.reduce import gather_samples
from fps_profile.selection.sharding.tensors import group_of, local
from fps_profile.errors import UserError
from fps_profile.knobs import chunks, weighted
from fps_profile.models.task import is_causal_lm, task_loss
from fps_profile.models.parts import find_classifier
from fps_profile.selection.selectors._gradients import (autocast, cross_entropy, gradient_pass, pre_logits, supcon_loss,
                                              take_grads)
from fps_profile.selection.selectors.base import Batch, Selector, Target, check_labels
from fps_profile.selection.selectors.registry import register


def flip_views(images: torch.Tensor, view: int) -> torch.Tensor:
    """Default second view: a horizontal flip (GPS uses random crops and colour jitter;
    the cost in memory and time is the same, and synthetic data needs no realism)."""
    return images if view % 2 == 0 else images.flip(-1)


_LOSSES = ("auto", "supcon", "ce", "lm")


@register("gps")
class GPS(Selector):
    """|sum over batches of dL/dw|, with GPS's loss: two views, SupCon (T=0.07) on pre-logits.

    Faithful to the public GPS code by default: train mode, gradients of all batches
    accumulated (signed) before the absolute value, the views of a batch concatenated
    into one forward pass, and the loss on the L2-normalised pre-logits feature
    (timm's ``forward_head(..., pre_logits=True)``, so every timm family works; the
    classifier itself gets no gradient from it).

    On a causal language model (``transformers``) the loss is the next-token
    cross-entropy the model computes itself (:func:`fps_profile.models.task.task_loss`,
    labels = the token ids): SupCon needs class labels, which token batches do
    not have. There is one view: GPS's second view is an image augmentation, with
    no counterpart for tokens, so ``views`` and ``augment`` are not used. The rest
    is as on images: train mode, signed gradients summed over batches, then ``|.|``.

    With ``micro_batch`` (set by :func:`fps_profile.select`) each batch is split into
    chunks whose losses are weighted by their share of the batch: for ``loss="ce"``
    the gradient is the whole batch's; for SupCon the contrastive pairs stay inside
    a chunk, so the loss (and possibly the mask) differs from the whole batch's.

    Args:
        loss: ``"auto"`` (the default: ``"supcon"`` on image classifiers, ``"lm"`` on
            causal language models), ``"supcon"`` (GPS), ``"ce"`` (cross-entropy on
            a classifier's logits) or ``"lm"`` (a language model's next-token
            cross-entropy).
        views: Views per image, concatenated along the batch (GPS: 2); images only.
        temperature: SupCon temperature.
        amp: Run the passes under autocast (fp16 on CUDA, bf16 elsewhere, as GPS's ``--amp``).
            Kept so old ``gps[amp=True]`` rows and scripts mean what they meant; the general
            knob is ``select(..., amp="fp16"|"bf16")`` / ``--amp`` (:mod:`fps_profile.knobs`).
        augment: ``augment(images, view_index) -> images``; defaults to a flip for odd views.
    """

    needs_backward = True
    needs_labels = True
    handles_micro_batch = True
    _group = None  # the process group of a sharded model (set by prepare)

    def __init__(self, *, loss: str = "auto", views: int = 2, temperature: float = 0.07,
                 amp: bool = False, augment: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        if loss not in _LOSSES:
            raise UserError(f"gps: loss must be one of {', '.join(map(repr, _LOSSES))}, not {loss!r}")
        if int(views) < 1:
            raise UserError(f"gps: views must be >= 1, not {views!r}")
        self.loss, self.views, self.temperature = loss, int(views), float(temperature)
        self.amp = bool(amp)
        self.augment = augment or flip_views

    def resolve_loss(self, model: nn.Module) -> str:
        """The loss GPS uses on ``model`` (``"auto"`` resolved).

        Raises:
            UserError: A classifier loss on a language model, or ``"lm"`` on a classifier.
        """
        lm = is_causal_lm(model)
        if self.loss == "auto":
            return "lm" if lm else "supcon"
        if lm and self.loss != "lm":
            what = "SupCon needs class labels" if self.loss == "supcon" else "'ce' is a classifier's loss"
            raise UserError(f"gps: loss={self.loss!r} does not apply to a language model ({what}); use loss='lm' "
                            "(next-token cross-entropy)")
        if not lm and self.loss == "lm":
            raise UserError(f"gps: loss='lm' needs a causal language model, not {type(model).__name__}; "
                            "use loss='supcon' or 'ce'")
        return self.loss

    def _loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, loss: str) -> torch.Tensor:
        if loss == "lm":
            return task_loss(model, images, labels)
        labels = check_labels(self, labels)
        x = torch.cat([self.augment(images, v) for v in range(self.views)]) if self.views > 1 else images
        b = images.shape[0]
        if loss == "ce":
            return cross_entropy(model, x, labels.repeat(self.views), self.name)
        feats = pre_logits(model, x)
        if feats.dtype.itemsize < 4:  # the loss in at least float32, as GPS computes it under AMP
            feats = feats.float()
        feats = torch.stack(feats.split(b), dim=1)  # [b, views, dim]
        # Sharded (FSDP2): the pairs of the global batch, every rank's samples gathered.
        feats, labels = gather_samples(feats, labels, self._group)
        return supcon_loss(feats, labels, self.temperature)

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        kind = self.resolve_loss(model)
        self._group = group_of(t.param for t in targets)
        with gradient_pass(model):
            for images, labels in batches:
                for x, y, share in chunks(images, labels, self.micro_batch):
                    with autocast(self.amp, x.device):
                        loss = weighted(self._loss(model, x, y, kind), share)
                    loss.backward()
                    del loss
            classifier = find_classifier(model)

            def hint(t: Target) -> str:
                if kind != "supcon" or not classifier.owns(t.name):
                    return ""
                return (" (SupCon is computed on the pre-logits features, so the classifier gets no gradient: "
                        "rank it with loss='ce', or use a scope that trains it whole, such as gps)")

            self._grads = take_grads(targets, self.name, hint)

    def score(self, target: Target) -> torch.Tensor:
        return local(self._grads.pop(target.name)).abs()  # sharded: the rank's shard of the averaged gradient

    def release(self) -> None:
        self._grads = {}
