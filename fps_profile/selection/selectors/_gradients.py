"""Gradient passes shared by the gradient-based selectors (GPS, SNIP)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fps_profile.errors import UserError
from fps_profile.selection.selectors.base import Target


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), as GPS computes it.

    Args:
        features: ``[batch, views, dim]``; L2-normalised here, as in GPS's loss.
        labels: ``[batch]`` class indices.
        temperature: Softmax temperature (GPS: 0.07).
        base_temperature: Scale reference (GPS: 0.07, so the factor is 1).

    Returns:
        The scalar loss averaged over every anchor of every view.
    """
    b, v, _ = features.shape
    features = F.normalize(features, dim=2)
    anchors = torch.cat(torch.unbind(features, dim=1), dim=0)  # view-major, [v*b, d]
    logits = anchors @ anchors.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = torch.eq(labels.view(-1, 1), labels.view(1, -1)).to(logits.dtype).repeat(v, v)
    not_self = 1.0 - torch.eye(v * b, device=logits.device, dtype=logits.dtype)
    same = same * not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    positives = same.sum(1).clamp_min(1.0)  # a lone sample with one view has no positive
    mean_log_prob_pos = (same * log_prob).sum(1) / positives
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The feature the classifier reads, ``[batch, dim]``, through timm's
    ``forward_head(forward_features(x), pre_logits=True)``: the CLS token after the
    final norm for a ViT, the pooled features for a CNN (ResNet, EfficientNet, ...),
    the pooled and normed features for ConvNeXt/Swin.

    Raises:
        UserError: The model has no ``forward_features``/``forward_head`` (not a timm
            model), or its ``forward_head`` takes no ``pre_logits``.
    """
    features, head = getattr(model, "forward_features", None), getattr(model, "forward_head", None)
    if not (callable(features) and callable(head)):
        raise UserError(
            f"{type(model).__name__} has no forward_features/forward_head: the contrastive "
            "loss needs a timm model (or use loss='ce')"
        )
    try:
        out = head(features(images), pre_logits=True)
    except TypeError as exc:
        if "pre_logits" not in str(exc):
            raise
        raise UserError(f"{type(model).__name__}.forward_head takes no pre_logits: the contrastive loss "
                        "cannot get its features (use loss='ce')") from None
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise UserError(f"{type(model).__name__}.forward_head(..., pre_logits=True) gave no [batch, dim] "
                        "features (use loss='ce')")
    return out.flatten(1)


def cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, selector: str) -> torch.Tensor:
    """Cross-entropy of ``model(images)``, which must be ``[batch, classes]`` logits ``labels`` index.

    Only shapes are checked up front (no device sync); a label beyond the classes
    fails in the loss, turned into one line where the device reports it (CPU).
    """
    if getattr(model, "num_classes", None) == 0:
        raise UserError(f"selector {selector!r}: the cross-entropy loss needs logits, but "
                        f"{type(model).__name__} has no classifier (num_classes=0)")
    out = model(images)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != labels.shape[0]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"selector {selector!r}: the cross-entropy loss needs [batch, classes] logits, but "
                        f"{type(model).__name__} returned {shape}")
    try:
        return F.cross_entropy(out, labels)
    except IndexError as exc:
        raise UserError(f"selector {selector!r}: a label is out of range for the model's {out.shape[1]} "
                        f"outputs ({exc}); build it with enough classes (num_classes=)") from None


@contextlib.contextmanager
def gradient_pass(model: nn.Module) -> Iterator[None]:
    """Train mode, every parameter requiring grad, ``.grad`` cleared; all restored on exit.

    Gradients produced inside the block should be taken (referenced) before it ends:
    on exit each parameter gets back the ``.grad`` it had before.
    """
    saved = [(p, p.grad, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _, _ in saved:
            p.grad = None
            p.requires_grad_(True)
        model.train()
        yield
    finally:
        for p, grad, flag in saved:
            p.grad = grad
            p.requires_grad_(flag)
        model.train(was_training)


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA (as GPS's ``--amp``), bf16 elsewhere; a no-op when disabled."""
    from fps_profile import knobs

    if not enabled:
        return contextlib.nullcontext()
    return knobs.autocast("fp16" if device.type == "cuda" else "bf16", device)


def take_grads(targets: Sequence[Target], selector: str,
               hint: Callable[[Target], str] | None = None) -> dict[str, torch.Tensor]:
    """References to the targets' gradients (each must exist).

    Args:
        hint: Gives the end of the error for a target without gradient (why the loss
            may not reach it), or "".
    """
    grads = {}
    for t in targets:
        if t.param.grad is None:
            raise UserError(
                f"selector {selector!r}: {t.name!r} ({type(t.module).__name__}) received no gradient: "
                f"the loss does not use it{hint(t) if hint else ''}"
            )
        grads[t.name] = t.param.grad
    return grads

