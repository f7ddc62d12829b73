"""The measured work: one callable per phase, shared by the runner, sim and asv.

``select``     the selector on the selection batch(es), producing a mask;
``inference``  a plain ``torch.no_grad()`` eval forward: the floor selectors are compared with;
``train_step`` one fine-tuning step (forward, cross-entropy, backward, clip, AdamW),
               sparse through :func:`fps_profile.make_sparse_trainable` when a mask
               is given, full fine-tuning otherwise;
``train_floor`` forward, cross-entropy and backward with every parameter requiring grad,
               each gradient dropped the moment it is made: the floor of any exact
               sparse step (what a sparse step needs beyond it is its trainable state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fps_profile import knobs as _knobs
from fps_profile.errors import UserError
from fps_profile.knobs import Knobs
from fps_profile.models.task import logits_of, task_loss
from fps_profile.selection.mask import Mask
from fps_profile.trackers import labels as breakdown_marks


@dataclass(frozen=True)
class BudgetSpec:
    """A selection budget as written in results: ``k=1``, ``fraction=0.01`` or ``shira:8``."""

    k: int | None = 1
    fraction: float | None = None
    shira: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> BudgetSpec:
        if text is None:
            return cls()
        from fps_profile.selection.shira import is_shira, parse_rank

        if is_shira(text):
            return cls(k=None, shira=parse_rank(text))
        key, sep, value = str(text).partition("=")
        try:
            if sep and key.strip() == "k":
                return cls(k=int(value), fraction=None)
            if sep and key.strip() == "fraction":
                return cls(k=None, fraction=float(value))
        except ValueError:
            pass
        raise UserError(f"budget must look like k=1, fraction=0.01 or shira:8, not {text!r}")

    def select_kwargs(self) -> dict:
        """``k``, ``fraction`` and ``budget`` as :func:`fps_profile.select` takes them."""
        return {"k": self.k, "fraction": self.fraction, "budget": None if self.shira is None else str(self)}

    def __str__(self) -> str:
        if self.shira is not None:
            return f"shira:{self.shira}"
        return f"k={self.k}" if self.k is not None else f"fraction={self.fraction:g}"


def select_fn(model: nn.Module, batches, selector: str, budget: BudgetSpec, scope: str = "gps",
              options: dict | None = None, knobs: Knobs = Knobs(), seed: int | None = None) -> Callable[[], Mask]:
    """The ``select`` phase: ``fps_profile.select`` on prepared batches (every run under ``seed``,
    so every run gives the same mask; a ``seed`` among a selector's options, e.g. ``random:seed=3``,
    wins over the cell's)."""
    from fps_profile.selection.select import select

    options = dict(options or {})
    seed = options.pop("seed", seed)

    def run() -> Mask:
        return select(model, batches, selector, **budget.select_kwargs(), scope=scope, amp=knobs.amp,
                      checkpointing=knobs.checkpointing, micro_batch=knobs.micro_batch, seed=seed, **options)

    return run


def inference_fn(model: nn.Module, images: torch.Tensor, knobs: Knobs = Knobs()) -> Callable[[], torch.Tensor]:
    """The ``inference`` phase: an eval-mode forward under ``torch.no_grad()`` (autocast and
    chunks of ``micro_batch`` samples, logits concatenated, when set)."""
    model.eval()

    def run() -> torch.Tensor:
        with torch.no_grad(), _knobs.autocast(knobs.amp, images.device):
            if knobs.micro_batch is None or knobs.micro_batch >= images.shape[0]:
                return model(images)
            return torch.cat([logits_of(model(x)) for x, _, _ in _knobs.chunks(images, None, knobs.micro_batch)])

    return run


def _backward_passes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, knobs: Knobs,
                     scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward, task loss and backward of one batch, in chunks of ``knobs.micro_batch`` (each
    chunk loss weighted by its share, so the gradients add up to the batch's), under
    autocast when set; returns the batch loss (detached)."""
    total = None
    for x, y, share in _knobs.chunks(images, labels, knobs.micro_batch):
        with _knobs.autocast(knobs.amp, images.device):
            loss = _knobs.weighted(task_loss(model, x, y), share)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
        del loss
    return total


@dataclass
class TrainStep:
    """One optimisation step; sparse when built with a mask.

    Attributes:
        params: What the optimizer updates.
        trainable: Trainable scalars (count).
    """

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    clip: float = 1.0
    knobs: Knobs = Knobs()
    scaler: torch.amp.GradScaler | None = None

    @property
    def trainable(self) -> int:
        from fps_profile.selection.sparse import trainable_count

        return trainable_count(self.params)

    def __call__(self) -> torch.Tensor:
        loss = _backward_passes(self.model, self.images, self.labels, self.knobs, self.scaler)
        with breakdown_marks.phase("optimizer"):  # clipping included
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss


def train_step_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mask: Mask | None = None,
                  lr: float = 1e-3, weight_decay: float = 0.05, knobs: Knobs = Knobs()) -> TrainStep:
    """The ``train_step`` phase: AdamW with weight decay and gradient clipping; with
    ``knobs``, under autocast (a ``GradScaler`` for fp16), with activation
    checkpointing, and accumulating the gradients of micro-batches."""
    from fps_profile.selection.sparse import make_sparse_trainable

    model.train()
    if knobs.checkpointing:
        _knobs.enable_checkpointing(model)
    if mask is not None:
        params = make_sparse_trainable(model, mask)
    else:
        params = [p.requires_grad_(True) for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return TrainStep(model, images, labels, params, optimizer, knobs=knobs,
                     scaler=_knobs.grad_scaler(knobs.amp, images.device))


@dataclass
class TrainFloor:
    """Forward, cross-entropy and backward; every gradient is dropped as it is accumulated."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    knobs: Knobs = Knobs()

    def __call__(self) -> torch.Tensor:
        return _backward_passes(self.model, self.images, self.labels, self.knobs)


def _drop_grad(p: torch.Tensor) -> None:
    p.grad = None


def train_floor_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   knobs: Knobs = Knobs()) -> TrainFloor:
    """The ``train_floor`` phase: :class:`TrainFloor`, with a hook on every parameter that
    frees its gradient the moment autograd has made it (so no two ever coexist)."""
    model.train()
    if knobs.checkpointing:
        _knobs.enable_checkpointing(model)
    for p in model.parameters():
        p.requires_grad_(True)
        p.register_post_accumulate_grad_hook(_drop_grad)
    return TrainFloor(model, images, labels, knobs)


# The builders the phase table (fps_profile.rows.phases) names: cell -> the callable every run calls.

@dataclass(frozen=True)
class Prepared:
    """A phase ready to run: ``fn`` is called for warm-up, memory and timing runs."""

    fn: Callable[[], Any]
    params_trainable: int | None


def build_select(cell, model, batches, budget, options, backend) -> Prepared:
    fn = select_fn(model, batches, cell.selector, budget, cell.scope, options, Knobs.of(cell), getattr(cell, "seed", 0))
    return Prepared(fn, backend.select_trainable(model, budget, cell.scope))


def trainer_fn(name: str | None) -> Callable[..., TrainStep]:
    """The step builder of trainer ``name`` (:data:`fps_profile.rows.values.TRAINERS`; None: fps-profile's):
    ``fn(model, images, labels, mask=, knobs=) -> TrainStep``."""
    import importlib

    from fps_profile.rows.values import TRAINERS, parse_trainer

    module, _, attr = TRAINERS[parse_trainer(name or "fps-profile")].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_train_step(cell, model, batches, budget, options, backend) -> Prepared:
    # The mask is built without the knobs: only its counts matter to the step's memory.
    mask = backend.train_mask(model, batches, cell, budget, options) if cell.selector is not None else None
    fn = backend.train_step(model, batches[0], mask, Knobs.of(cell), trainer=cell.trainer)
    return Prepared(fn, fn.trainable)


def build_inference(cell, model, batches, *_) -> Prepared:
    return Prepared(inference_fn(model, batches[0][0], Knobs.of(cell)), 0)


def build_train_floor(cell, model, batches, *_) -> Prepared:
    return Prepared(train_floor_fn(model, *batches[0], knobs=Knobs.of(cell)), 0)


def prepare(cell, model: nn.Module, batches: Sequence, backend) -> Prepared:
    """Build ``cell.phase`` on ``model`` and ``batches`` (nothing measured yet) with its builder
    in the phase table; ``backend`` supplies the hooks of :class:`~fps_profile.measure.backends.Backend`.

    A selection cell without a budget fails in ``select`` as it would in the API
    ("give exactly one of k or fraction").
    """
    import importlib

    from fps_profile.rows.phases import get_phase

    module, _, name = get_phase(cell.phase).build.partition(":")
    build = getattr(importlib.import_module(module), name)
    budget = BudgetSpec.parse(cell.budget) if cell.budget else BudgetSpec(k=None)
    return build(cell, model, batches, budget, dict(cell.options), backend)
