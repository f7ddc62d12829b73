"""Wanda (Sun et al. 2023): the pruning metric, used here to keep the largest."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fps_profile.selection.selectors._activations import InputStats, scale_rows
from fps_profile.selection.selectors.base import Batch, Selector, Target
from fps_profile.selection.selectors.registry import register
from fps_profile.selection.sharding.reduce import local_stat
from fps_profile.selection.sharding.tensors import local


@register("wanda")
class Wanda(Selector):
    """|w_ij| x ||x_j||_2 over all tokens of all samples; one forward pass, no gradients.

    Differs from FPS only in the reduction: the L2 norm instead of the mean of |x|
    (the same input features, convolutions and GPT-2's ``Conv1D`` included).
    """

    needs_backward = False
    handles_micro_batch = True
    token_chunks = True  # InputStats.collect: sums over tokens, chunk by chunk

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        self._stats = InputStats(targets, ord=2, selector=self.name)
        self._stats.collect(model, batches, self.micro_batch)

    def score(self, target: Target) -> torch.Tensor:
        sumsq, _ = self._stats.stat(target)
        return scale_rows(local(target.param.detach()).abs(), local_stat(sumsq.sqrt(), target.param, target.out_axis),
                          target.out_axis)

    def release(self) -> None:
        self._stats = None
