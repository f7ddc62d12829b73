"""GD-FPS: Growth-Driven Feedforward Parameter Selection (arXiv 2510.27359 v2).

The paper's second version scales each weight's magnitude by the *relative growth*
of its input activation against a pre-training anchor. Only its abstract was
reachable when this was written; the statistic below is the reading documented in
docs/gd-fps.md (what is quoted, what was assumed, the fallback).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.selection.selectors._activations import InputStats, scale_rows
from fps_profile.selection.selectors._anchor import Anchor, anchor_stats, check_eps, save_anchor
from fps_profile.selection.selectors.base import Batch, Selector, Target
from fps_profile.selection.selectors.registry import register

__all__ = ["GDFPS", "Anchor", "anchor_stats", "save_anchor"]

#: ``ratio``: g = a / (a0 + eps); ``change``: g = (a - a0) / (a0 + eps), i.e. ratio - 1.
GROWTHS = ("ratio", "change")


@register("gd-fps")
class GDFPS(Selector):
    """|w_ij| x growth of mean |x_j| over a pre-training anchor (FPS without one); forward only.

    The downstream statistic ``a_j`` is FPS's: mean ``|x_j|`` over every token of
    every selection sample and every use of the weight (convolutions per input
    channel and kernel offset, GPT-2's ``Conv1D`` along axis 0, micro-batches add
    up the same). The anchor ``a0_j`` is the same statistic taken once on
    pre-training data and saved with :func:`save_anchor`. The score is
    ``|w_ij| * a_j / (a0_j + eps)`` (``growth="ratio"``) or
    ``|w_ij| * (a_j - a0_j) / (a0_j + eps)`` (``growth="change"``). Without an
    anchor (``anchor=None``) the score is FPS's, ``|w_ij| * a_j``. Peak memory is
    FPS's plus one anchor tensor (one float per input feature) at a time.

    Args:
        anchor: Path of an anchor file from :func:`save_anchor`, computed on the same
            pre-trained model; None: no anchor, rank as FPS.
        growth: ``"ratio"`` or ``"change"`` (needs an anchor).
        eps: Added to the anchor before dividing (activation units; > 0).
    """

    needs_backward = False
    handles_micro_batch = True
    token_chunks = True  # InputStats.collect: sums over tokens, chunk by chunk

    def __init__(self, *, anchor: str | os.PathLike | None = None, growth: str = "ratio",
                 eps: float = 1e-6) -> None:
        if growth not in GROWTHS:
            raise UserError(f"selector 'gd-fps': growth must be one of {', '.join(GROWTHS)}, not {growth!r}")
        if anchor is None and growth != "ratio":
            raise UserError(f"selector 'gd-fps': growth={growth!r} needs an anchor file (anchor=PATH, "
                            "from fps_profile.selection.selectors.gdfps.save_anchor)")
        self.eps = check_eps(eps)
        self.growth = growth
        self._anchor = None if anchor is None else Anchor(anchor)
        self._stats: InputStats | None = None

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        if self._anchor is not None:  # a missing name fails before the forward pass
            for t in targets:
                self._anchor.check(t.name)
        self._stats = InputStats(targets, ord=1, selector=self.name)
        self._stats.collect(model, batches, self.micro_batch)
        if self._anchor is not None:
            for t in targets:
                self._anchor.check(t.name, tuple(self._stats.sums[id(t.param)].shape))

    def score(self, target: Target) -> torch.Tensor:
        total, count = self._stats.stat(target)
        act = total / count
        if self._anchor is not None:
            # one allocation of the statistic's size, on its device, seen by every tracker
            base = torch.empty(act.shape, dtype=act.dtype, device=act.device)
            base.copy_(torch.from_numpy(self._anchor.values(target.name)).view(act.shape))
            act = act.div_(base.add_(self.eps))
            if self.growth == "change":
                act = act.sub_(1.0)
        return scale_rows(target.param.detach().abs(), act, target.out_axis)

    def release(self) -> None:
        self._stats = None
