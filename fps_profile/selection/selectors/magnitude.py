"""Magnitude: the data-free baseline."""

from __future__ import annotations

import torch

from fps_profile.selection.selectors.base import Selector, Target
from fps_profile.selection.selectors.registry import register
from fps_profile.selection.sharding.tensors import local


@register("magnitude")
class Magnitude(Selector):
    """|w_ij|; needs no data and no gradients."""

    needs_data = False

    def score(self, target: Target) -> torch.Tensor:
        return local(target.param.detach()).abs()  # sharded (FSDP2): this rank's rows
