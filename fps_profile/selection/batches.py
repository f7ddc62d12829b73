"""Batches as selectors see them, and running a model without leaving a trace on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fps_profile import knobs
from fps_profile.errors import UserError
from fps_profile.selection.selectors.base import Batch


class Batches:
    """Normalises user batches to ``(images, labels)`` on the model's device and dtype."""

    def __init__(self, batches: Iterable, device: torch.device, dtype: torch.dtype,
                 split: int | None = None) -> None:
        self._batches, self.device, self.dtype, self.split = batches, device, dtype, split

    def __iter__(self) -> Iterator[Batch]:
        for item in self._batches:
            if isinstance(item, torch.Tensor):
                images, labels = item, None
            elif isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
                images, labels = item[0], (item[1] if len(item) > 1 else None)
            else:
                raise UserError(
                    f"a batch must be an image tensor or an (images, labels) tuple, not {type(item).__name__}"
                )
            images = images.to(device=self.device, dtype=self.dtype if images.is_floating_point() else None)
            if labels is not None:
                labels = torch.as_tensor(labels).to(self.device)
            for x, y, _ in knobs.chunks(images, labels, self.split):
                yield x, y


@contextlib.contextmanager
def left_as_found(model: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves ``model`` as it was: every parameter's ``requires_grad``
    and ``.grad`` (the same objects), every submodule's train/eval flag, every buffer.

    Selectors may run the model in train mode (GPS does, as its code does), which
    would update BatchNorm running statistics. Inside the block BatchNorm layers
    keep train-mode semantics (batch statistics) without updating anything: their
    ``track_running_stats`` is off, which costs no memory. Running statistics of
    other layers (e.g. EvoNorm's ``running_var``, InstanceNorm's) are copied before
    and written back after; they are a few numbers per channel. Parameters are
    never copied.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    batchnorms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    stats = [(b, b.detach().clone()) for m in model.modules() if not isinstance(m, _BatchNorm)
             for n, b in m.named_buffers(recurse=False) if n.startswith("running_") or n == "num_batches_tracked"]
    try:
        for m in batchnorms:
            m.track_running_stats = False
        yield
    finally:
        for m in batchnorms:
            m.track_running_stats = True
        with torch.no_grad():
            for b, value in stats:
                b.copy_(value)
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.grad = grad
            p.requires_grad_(requires_grad)
