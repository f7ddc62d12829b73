"""The ``finetune`` phase: what a selection is worth.

One cell fine-tunes its model for ``steps`` steps and evaluates it on the held-out split:

* a selector (``fps``, ``gps``, ...): its mask, computed on the cell's selection batches with
  its budget, scope, options and seed, as the ``select`` phase computes it, makes exactly its
  entries trainable (:func:`fps_profile.make_sparse_trainable`);
* no selector: full fine-tuning, every parameter trainable;
* ``head``: the classifier alone, the rest in eval mode (a linear probe on fixed features:
  BatchNorm statistics are not updated, dropout is off);
* ``frozen``: nothing is trained; the model is evaluated as it is.

A step is the ``train_step`` phase's (:class:`~fps_profile.measure.phases.TrainStep`: the task
loss, backward, gradient clipping at 1.0, AdamW with weight decay 0.05, the cell's knobs) with
the learning rate following a cosine from ``lr`` (default :data:`DEFAULT_LR`) to 0 over the
steps; the model is in train mode (BatchNorm statistics adapt, dropout is on) except for
``head``. Evaluation: eval mode, no gradients, top-1 accuracy (a language model: next-token
accuracy) and the mean loss over the whole held-out split. How it is measured:
:mod:`fps_profile.measure.training`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fps_profile.knobs import Knobs, autocast
from fps_profile.measure.feed import Feed
from fps_profile.measure.phases import Prepared, TrainStep
from fps_profile.models.task import is_causal_lm, logits_of
from fps_profile.rows.schema import axis

DEFAULT_STEPS = axis("steps").default
DEFAULT_LR = axis("lr").default
HEAD, FROZEN = "head", "frozen"


def head_mask(model: nn.Module):
    """A mask training the classifier (:func:`fps_profile.models.parts.find_classifier`) alone.

    Raises:
        UserError: A model without a classifier (a language model has none).
    """
    from fps_profile.errors import UserError
    from fps_profile.models.parts import find_classifier
    from fps_profile.selection.mask import Mask, MaskEntry

    classifier = find_classifier(model)
    params = dict(model.named_parameters())
    owned = [n for n in params if classifier.owns(n)]
    if not owned:
        raise UserError(f"finetune:head needs a classifier, and {type(model).__name__} has none")
    return Mask({n: (MaskEntry.all if n in owned else MaskEntry.none)(tuple(p.shape), device=p.device)
                 for n, p in params.items()}, {"selector": HEAD})


def cosine(step: int, steps: int) -> float:
    """The learning-rate factor of step ``step`` (0-based) of ``steps``: 1 at the first, falling to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * step / steps))


@torch.no_grad()
def evaluate(model: nn.Module, batches, knobs: Knobs = Knobs()) -> tuple[float, float]:
    """``(accuracy, mean loss)`` of ``model`` (eval mode) over ``batches``: top-1 class accuracy and
    cross-entropy, or a language model's next-token accuracy and cross-entropy."""
    model.eval()
    lm = is_causal_lm(model)
    correct, total, loss = 0, 0, 0.0
    for x, y in batches:
        with autocast(knobs.amp, x.device):
            logits = logits_of(model(x)).float()
        if lm:
            logits, y = logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.numel())
    return correct / max(total, 1), loss / max(total, 1)


@dataclass
class FineTune:
    """A prepared fine-tuning run: each call is the next step; then :meth:`evaluate`.

    Attributes:
        model: The model (changed by every step).
        feed: Its batches.
        steps: Steps to run (0 for ``frozen``).
        step: The train step (None for ``frozen``); its ``images``/``labels`` are set per step.
        scheduler: The cosine schedule (None for ``frozen``).
        knobs: The cell's knobs (evaluation runs under its autocast too).
        select_peak: Peak bytes of the selection that made the mask, where the backend measured it.
        done: Steps run so far.
        staged: The step whose batch is in place (-1: none yet).
        last: Loss of the last step run (a tensor: on the sim it has no value).
    """

    model: nn.Module
    feed: Feed
    steps: int
    step: TrainStep | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    knobs: Knobs = Knobs()
    select_peak: int | None = None
    done: int = 0
    staged: int = -1
    last: torch.Tensor | None = None

    @property
    def optimizer(self):
        return self.step.optimizer if self.step is not None else None

    @property
    def last_loss(self) -> float | None:
        """The last step's loss as a number (None before any step)."""
        return None if self.last is None else float(self.last)

    @property
    def trainable(self) -> int:
        return self.step.trainable if self.step is not None else 0

    def stage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the next step's batch in place (the last step's is dropped); returns it."""
        if self.staged != self.done:
            self.step.images = self.step.labels = None  # never two batches at once
            self.step.images, self.step.labels = self.feed.train(self.done)
            self.staged = self.done
        return self.step.images, self.step.labels

    def __call__(self) -> torch.Tensor:
        """Run the next step (its batch staged first, unless :meth:`stage` did it); returns its loss (detached)."""
        self.stage()
        self.last = None  # the last step's loss is not kept through this one
        loss = self.step()
        self.scheduler.step()
        self.done += 1
        self.last = loss
        return loss

    def evaluate(self) -> tuple[float, float] | None:
        """``(accuracy, loss)`` on the held-out batches, or None without any (the sim)."""
        if self.feed.held_out is None:
            return None
        return evaluate(self.model, self.feed.held_out(), self.knobs)


def build_finetune(cell, model, batches, budget, options, backend) -> Prepared:
    """The phase table's builder: the mask (``backend.finetune_mask``), the feed
    (``backend.finetune_feed``), the optimizer and its schedule; nothing trained yet."""
    knobs = Knobs.of(cell)
    steps = cell.steps or DEFAULT_STEPS
    mask, select_peak = None, None  # the selection first, with nothing of the feed alive yet
    if cell.selector == HEAD:
        mask = head_mask(model)
    elif cell.selector not in (None, FROZEN):
        mask, select_peak = backend.finetune_mask(model, batches, cell, budget, options)
    feed = backend.finetune_feed(cell, model, batches, steps)
    if cell.selector == FROZEN:
        return Prepared(FineTune(model, feed, 0, knobs=knobs), 0)
    step = backend.train_step(model, feed.train(0), mask, knobs, lr=cell.lr or DEFAULT_LR)
    if cell.selector == HEAD:
        model.eval()  # a linear probe: the features stay what the frozen model computes
    scheduler = torch.optim.lr_scheduler.LambdaLR(step.optimizer, lambda i: cosine(i, steps))
    return Prepared(FineTune(model, feed, steps, step, scheduler, knobs, select_peak, staged=0), step.trainable)
