"""FPS: Feedforward-based Parameter Selection (arXiv 2510.27359 v1)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fps_profile.selection.selectors._activations import InputStats, scale_rows
from fps_profile.selection.selectors.base import Batch, Selector, Target
from fps_profile.selection.selectors.registry import register
from fps_profile.selection.sharding.reduce import local_stat
from fps_profile.selection.sharding.tensors import local


@register("fps")
class FPS(Selector):
    """|w_ij| x mean |x_j| over all tokens of all samples; one forward pass, no gradients.

    The statistic is the mean absolute input activation per input feature, taken
    over every token position of every selection sample and every use of the
    weight. For a convolution (grouped and depthwise included) weight entry
    ``[o, i, a, b]`` gets the mean ``|x|`` of the input channel it reads (channel
    ``i`` of its group) at kernel offset ``(a, b)``, over every output position,
    zero padding included. On a language model every token of every sequence
    counts, and GPT-2's ``Conv1D`` (weight ``[in, out]``, called through
    ``torch.addmm``) is scored along its input axis, axis 0. Peak memory is that
    of a ``torch.no_grad()`` forward up to the last scored layer (the forward stops
    there: :mod:`fps_profile.selectors._early_stop`) plus one input-feature statistic
    per weight and one layer's scores at a time.
    """

    needs_backward = False
    handles_micro_batch = True
    token_chunks = True  # InputStats.collect: sums over tokens, chunk by chunk

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        self._stats = InputStats(targets, ord=1, selector=self.name)
        self._stats.collect(model, batches, self.micro_batch)

    def score(self, target: Target) -> torch.Tensor:
        total, count = self._stats.stat(target)
        w = local(target.param.detach())  # sharded (FSDP2): this rank's shard, statistics of every rank
        return scale_rows(w.abs(), local_stat(total / count, target.param, target.out_axis), target.out_axis)

    def release(self) -> None:
        self._stats = None
