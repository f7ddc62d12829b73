"""Random: seeded uniform scores, the chance baseline."""

from __future__ import annotations

import torch

from fps_profile.selection.selectors.base import Selector, Target
from fps_profile.selection.selectors.registry import register
from fps_profile.selection.sharding.tensors import local_slice


@register("random")
class Random(Selector):
    """Uniform random scores from a seeded generator: same seed, same mask.

    Args:
        seed: Seed of the generator. Scores are drawn on the CPU, target by target
            in model order, so a mask depends on the seed and the model alone,
            not on the device. On a sharded model (FSDP2) every rank draws every
        tensor whole, from the same seed, and keeps its shard: the same mask.
    """

    needs_data = False

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def score(self, target: Target) -> torch.Tensor:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.seed)
        p = target.param
        return local_slice(torch.rand(p.shape, generator=self._gen), p).to(p.device)

    def release(self) -> None:
        self._gen = None
