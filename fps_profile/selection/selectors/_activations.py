"""Per-input-feature activation statistics of the target weights, keyed by the tensor.

Shared by the activation-based selectors (FPS, Wanda). During the selection
forward a ``TorchFunctionMode`` watches every linear and convolution call
(``F.linear``, ``F.conv1d/2d/3d``, whoever makes it: the layer's own forward,
or a block that calls ``F.linear(x, self.qkv.weight)`` itself as EVA does) and,
when the weight passed in *is* a target tensor, adds that call's input sums
(:mod:`fps_profile.selection.selectors.conv_stats`) to the target's. A weight used
several times is scored over all its uses. GPT-2's ``Conv1D`` (weight ``[in, out]``)
computes ``torch.addmm(bias, x, weight)``: an ``addmm`` whose ``mat2`` is such a
target counts ``mat1`` as the input, its features along the weight's axis 0.
Each target keeps one small float32 tensor of the weight's input-feature shape,
so the peak stays that of a ``torch.no_grad()`` forward, and each forward stops
right after the last target use (:mod:`fps_profile.selection.selectors._early_stop`): the
peak is that of the forward up to the last scored layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fps_profile.selection.sharding.tensors import group_of, stands_for
from fps_profile.errors import UserError
from fps_profile.knobs import chunks, token_chunk
from fps_profile.selection.selectors.conv_stats import conv_sums, linear_sums
from fps_profile.selection.selectors import _early_stop
from fps_profile.selection.selectors._early_stop import Plan, StopForward
from fps_profile.selection.selectors.base import Batch, Target

#: Argument names of ``F.convNd`` (``F.linear`` shares the first two).
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
#: Watched functions -> number of spatial dims (0: linear). ``F.convNd`` is ``torch.convNd``.
_WATCHED = {torch._C._nn.linear: 0, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_BUILTIN = type(torch.conv2d)


def _arg(args: tuple, kwargs: dict, i: int):
    name = _CONV_ARGS[i]
    if i < len(args):
        return args[i]
    return kwargs.get(name, _CONV_DEFAULTS.get(name))


class _Watch(TorchFunctionMode):
    """Adds input sums of every linear/conv call whose weight is a target to ``stats``.

    With a ``plan`` it raises :class:`StopForward` right after the plan's last target
    use (and at any call after it, should the model have caught the stop). With
    ``record`` it only lists the target uses (``uses``: weight ids, in order).
    """

    def __init__(self, stats: InputStats, plan: Plan | None = None, record: bool = False) -> None:
        super().__init__()
        self.stats, self.plan = stats, plan
        self.uses: list[int] | None = [] if record else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.plan is not None and self.plan.stopped:
            raise StopForward()
        out = func(*args, **kwargs)
        if func is torch.addmm:  # Conv1D: addmm(bias, x, weight[in, out])
            weight = stands_for(args[2] if len(args) > 2 else kwargs.get("mat2"))
            target = self.stats.targets.get(id(weight))
            if target is not None and target.param is weight and target.out_axis == 1:
                if self.uses is not None:
                    self.uses.append(id(weight))
                    return out
                self.stats.add(target, *linear_sums(args[1] if len(args) > 1 else kwargs["mat1"], self.stats.ord))
                self._passed(weight)
            return out
        n = _WATCHED.get(func) if type(func) is _BUILTIN else None
        if n is not None:
            weight = _arg(args, kwargs, 1)
            target = self.stats.targets.get(id(stands_for(weight)))  # FSDP2: the sharded parameter
            if target is not None and target.param is stands_for(weight) and target.out_axis == 0:
                if self.uses is not None:
                    self.uses.append(id(target.param))
                    return out
                x = _arg(args, kwargs, 0)
                if n == 0:
                    sums, count = linear_sums(x, self.stats.ord)
                else:
                    sums, count = conv_sums(x, out.shape[-n:], weight.shape[2:], _arg(args, kwargs, 3),
                                            _arg(args, kwargs, 4), _arg(args, kwargs, 5), self.stats.ord)
                self.stats.add(target, sums, count)
                self._passed(target.param)
        return out

    def _passed(self, weight: torch.Tensor) -> None:
        if self.plan is not None and self.plan.passed(id(weight)):
            raise StopForward()


class InputStats:
    """Accumulates input statistics of the target weights during forward passes.

    Args:
        targets: Parameters to score; each must be the weight of linear or
            convolution calls in the forward pass.
        ord: 1 for the sum of ``|x|`` (FPS), 2 for the sum of ``x**2`` (Wanda).
        selector: Selector name, for error messages.
    """

    def __init__(self, targets: Sequence[Target], ord: int, selector: str) -> None:
        self.ord = ord
        self.selector = selector
        self.targets = {id(t.param): t for t in targets}
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.stopped = self.full = 0
        self._key = frozenset(self.targets)  # the target set, as the early stop's cache knows it

    def add(self, target: Target, sums: torch.Tensor, count: int) -> None:
        """Add one call's ``sums`` over ``count`` tokens to ``target``'s statistic."""
        key = id(target.param)
        if key not in self.sums:
            self.sums[key], self.counts[key] = sums, count
        elif self.sums[key].shape != sums.shape:
            raise UserError(f"selector {self.selector!r} cannot score {target.name!r}: it is used by calls "
                            f"with inputs of different shapes ({list(self.sums[key].shape)} and {list(sums.shape)})")
        else:
            self.sums[key].add_(sums)
            self.counts[key] += count

    def collect(self, model: nn.Module, batches: Iterable[Batch], micro_batch: int | None = None,
                stop_early: bool = True) -> int:
        """Run a no-grad, eval-mode forward over ``batches`` (each in chunks of ``micro_batch``
        samples when given: the sums add up the same); returns the batch count. Without
        ``micro_batch`` a batch of token ids runs in chunks of :data:`~fps_profile.knobs.SELECT_TOKENS`
        tokens (:func:`~fps_profile.knobs.token_chunk`); images run whole.

        With ``stop_early`` (the default) each forward stops right after the last use of
        the last target (:mod:`fps_profile.selection.selectors._early_stop`): the same statistics,
        without computing what comes after (a language model's logits, a classifier).
        ``stopped`` and ``full`` count the forwards that stopped early and those that ran
        to their end. ``stop_early=False`` runs every forward whole (for a selector whose
        own hooks also read what comes after the last target); so do sharded models.

        Raises:
            UserError: A target no linear or convolution call used as its weight.
        """
        group = group_of(t.param for t in self.targets.values())
        # Sharded (FSDP2) forwards run whole: their all-gathers are collectives every rank must reach.
        stop_early = stop_early and group is None
        was_training = model.training
        model.eval()
        n_batches = 0
        try:
            with torch.no_grad():
                for images, _ in batches:
                    for x, _, _ in chunks(images, None, micro_batch or token_chunk(images)):
                        self._forward(model, x, stop_early)
                    n_batches += 1
        finally:
            model.train(was_training)
        if group is not None and n_batches:  # sharded (FSDP2): sums and counts of every rank's tokens
            from fps_profile.selection.sharding.reduce import reduce_input_stats

            reduce_input_stats(self.sums, self.counts, list(self.targets), group)
        unseen = [t for key, t in self.targets.items() if key not in self.sums]
        if unseen and n_batches:
            raise _unseen_error(model, unseen[0], self.selector)
        return n_batches

    def _forward(self, model: nn.Module, x: torch.Tensor, stop_early: bool) -> None:
        plan = _early_stop.plan_for(model, x, self._key, lambda: _Watch(self, record=True)) if stop_early else None
        try:
            with _Watch(self, plan):
                model(x)
        except StopForward:
            if plan is None or not plan.stopped:
                raise
        if plan is not None and plan.stopped:
            self.stopped += 1
            return
        self.full += 1
        if plan is not None:  # the forward departed from its trace: later ones run whole
            _early_stop.forget(model, x, self._key)

    def stat(self, target: Target) -> tuple[torch.Tensor, int]:
        """The accumulated sums for ``target`` and the number of tokens they cover.

        The sums are shaped ``[groups, in_features / groups, *kernel]`` (groups is
        1 for linear layers), ready for :func:`scale_rows`.
        """
        sums = self.sums[id(target.param)]
        per_group = target.param.shape[1 - target.out_axis]
        return sums.view(sums.shape[0] // per_group, per_group, *sums.shape[1:]), self.counts[id(target.param)]


def scale_rows(scores: torch.Tensor, stat: torch.Tensor, out_axis: int = 0) -> torch.Tensor:
    """Multiply ``scores`` (a weight's shape, ``[out, in/groups, ...]``) in place by ``stat``.

    ``stat`` is ``[groups, in/groups, ...]``: output row ``o`` belongs to group
    ``o // (out / groups)`` and reads that group's input features. With
    ``out_axis=1`` the weight is ``[in, out]`` (``Conv1D``) and ``stat`` is ``[1, in]``.
    """
    if out_axis == 1:
        return scores.mul_(stat.reshape(-1, 1).to(scores.dtype))
    if not scores.numel():  # an empty shard
        return scores
    groups = stat.shape[0]
    scores.unflatten(0, (groups, -1)).mul_(stat.unsqueeze(1).to(scores.dtype))
    return scores


def _unseen_error(model: nn.Module, target: Target, selector: str) -> UserError:
    from fps_profile.selection.scope import SCOPES, Role, assign_roles

    skipping = []
    for name in SCOPES.names():
        try:
            if assign_roles(model, name)[target.name][0] is not Role.RANKED:
                skipping.append(repr(name))
        except (UserError, KeyError):  # a scope that ranks nothing here is no way out
            continue
    names = skipping[0] if len(skipping) == 1 else f"{', '.join(skipping[:-1])} or {skipping[-1]}"
    way_out = (f"the {names} scope{'s' if len(skipping) > 1 else ''} skip{'' if len(skipping) > 1 else 's'} it"
               if skipping
               else "no built-in scope skips it: pass a Scope that freezes it")
    return UserError(
        f"selector {selector!r} cannot score {target.name!r} ({type(target.module).__name__}): no linear or "
        "convolution call used it as its weight in the forward pass (a layer that transforms its weight "
        f"first, e.g. weight standardisation, or never runs); {way_out}"
    )
