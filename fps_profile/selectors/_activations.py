"""Per-input-feature activation statistics gathered by forward hooks.

Shared by the activation-based selectors (FPS, Wanda). For each target module
it keeps one small vector (length ``in_features``, or ``C x kh x kw`` for a
convolution): the running sum over every token of every sample of ``|x_j|``
(``ord=1``) or ``x_j ** 2`` (``ord=2``). Reductions use
``torch.linalg.vector_norm``, which reduces without materialising an
activation-sized ``abs()`` or ``pow()`` copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fps_profile.errors import UserError
from fps_profile.selectors.base import Batch, Target


def _reduce(x: torch.Tensor, dims: tuple[int, ...], ord: int) -> torch.Tensor:
    r = torch.linalg.vector_norm(x, ord=ord, dim=dims)
    r = r.float()
    return r.square_() if ord == 2 else r


def _patchwise_view(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as ``[B, C, Hp, kh, Wp, kw]`` without a copy, if the conv tiles its input."""
    kh, kw = conv.kernel_size
    if (
        conv.stride != (kh, kw)
        or conv.padding not in ((0, 0), "valid")
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or not x.is_contiguous()
    ):
        return None
    b, c, h, w = x.shape
    hp, wp = h // kh, w // kw
    if (h, w) != (hp * kh, wp * kw):
        return None
    return x.view(b, c, hp, kh, wp, kw)


class InputStats:
    """Accumulates input statistics of the target modules during forward passes.

    Args:
        targets: Parameters to score; each must be the weight of an ``nn.Linear``
            or ``nn.Conv2d``.
        ord: 1 for the sum of ``|x|`` (FPS), 2 for the sum of ``x**2`` (Wanda).
        selector: Selector name, for error messages.
    """

    def __init__(self, targets: Sequence[Target], ord: int, selector: str) -> None:
        for t in targets:
            if t.attr != "weight" or not isinstance(t.module, (nn.Linear, nn.Conv2d)):
                raise UserError(
                    f"selector {selector!r} cannot score {t.name!r}: only weights of "
                    "nn.Linear and nn.Conv2d layers have input activations to use"
                )
        self.ord = ord
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, int] = {}
        self._modules = {t.module for t in targets}

    def _hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if isinstance(module, nn.Linear):
            r = _reduce(x, tuple(range(x.dim() - 1)), self.ord)
            n = x.numel() // x.shape[-1]
        else:
            if x.dim() == 3:  # unbatched conv input
                x = x.unsqueeze(0)
            patches = _patchwise_view(module, x)
            if patches is not None:
                r = _reduce(patches, (0, 2, 4), self.ord)
                n = patches.shape[0] * patches.shape[2] * patches.shape[4]
            else:  # general convolution: unfold one sample at a time to bound the copy
                r, n = 0, 0
                for xi in x.split(1):
                    cols = F.unfold(xi, module.kernel_size, module.dilation, module.padding, module.stride)
                    r = r + _reduce(cols, (0, 2), self.ord)
                    n += cols.shape[-1]
                    del cols
                r = r.view(module.in_channels, *module.kernel_size)
        if module in self.sums:
            self.sums[module].add_(r)
            self.counts[module] += n
        else:
            self.sums[module] = r
            self.counts[module] = n

    def collect(self, model: nn.Module, batches: Iterable[Batch]) -> int:
        """Run a no-grad, eval-mode forward over ``batches``; returns the batch count."""
        handles = [m.register_forward_pre_hook(self._hook) for m in self._modules]
        was_training = model.training
        model.eval()
        n_batches = 0
        try:
            with torch.no_grad():
                for images, _ in batches:
                    model(images)
                    n_batches += 1
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return n_batches

    def stat(self, target: Target) -> tuple[torch.Tensor, int]:
        """The accumulated sum for ``target``'s module and the number of tokens it covers."""
        if target.module not in self.sums:
            raise UserError(
                f"layer of {target.name!r} never ran in the forward pass; "
                "it cannot be scored from activations"
            )
        return self.sums[target.module], self.counts[target.module]
