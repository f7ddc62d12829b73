"""Magnitude: the data-free baseline."""

from __future__ import annotations

import torch

from fps_profile.selection.selectors.base import Selector, Target
from fps_profile.selection.selectors.registry import register


@register("magnitude")
class Magnitude(Selector):
    """|w_ij|; needs no data and no gradients."""

    needs_data = False

    def score(self, target: Target) -> torch.Tensor:
        return target.param.detach().abs()
