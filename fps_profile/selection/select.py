"""``select()``: a selector's scores, a scope and a budget put together into a mask."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from fps_profile import knobs
from fps_profile.selection.budget import Budget, make_budget
from fps_profile.selection.sharding import tensors as sharding
from fps_profile.errors import UserError
from fps_profile.selection.batches import Batches, left_as_found
from fps_profile.selection.failures import guarded
from fps_profile.rows.values import parse_amp, parse_micro_batch
from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry
from fps_profile.selection.scope import Role, Scope, assign_roles, get_scope
from fps_profile.selection.selectors import Target, create
from fps_profile.trackers import labels as breakdown_marks


_EMPTY = object()


def _kept(scored, into: dict):
    """``scored``, with a CPU copy of each score tensor put in ``into`` (before the budget reads it)."""
    for name, scores in scored:
        local = scores.to_local() if hasattr(scores, "to_local") else scores  # a DTensor: this rank's shard
        into[name] = local.detach().to("cpu", copy=True)
        yield name, scores


def select(model: nn.Module, batches: Iterable | None = None, selector: str = "fps", *,
           k: int | None = None, fraction: float | None = None, scope: str | Scope = "gps",
           amp: str | None = None, checkpointing: bool = False, micro_batch: int | None = None,
           budget: Budget | str | None = None, keep_scores: dict | None = None, seed: int | None = None,
           **options) -> Mask:
    """Choose which entries of ``model`` to fine-tune.

    Args:
        model: Any ``nn.Module``; on a timm model the scope also finds the classifier,
            normalisation layers, position tables and layer scales from the model itself.
        batches: Iterable of image tensors or ``(images, labels)`` tuples; read once.
            Selectors that need no data (``magnitude``, ``random``) accept None.
        selector: A registered selector name (see :func:`list_selectors`).
        k: Per-output-row top-K budget (GPS's policy).
        fraction: Global top-fraction budget, in ``(0, 1]``. Exactly one of k / fraction / budget.
        budget: Any :class:`~fps_profile.selection.budget.Budget`, or ``"shira:R"``: the ``R*(m+n)``
            best entries of every ranked ``m x n`` tensor (PEFT SHiRA's size,
            :class:`~fps_profile.selection.shira.ShiraRank`).
        scope: Which tensors are ranked, fully trainable or frozen: ``"gps"``
            (default), ``"all-weights"``, ``"attention"``, ``"mlp"``, ``"shira"`` (what PEFT SHiRA
            can train) or a :class:`Scope`.
        amp: ``"fp16"`` or ``"bf16"``: the selector's passes run under autocast;
            ``"fp16-nocache"``/``"bf16-nocache"`` without autocast's weight-copy cache
            (:mod:`fps_profile.knobs`). ``amp=True`` is GPS's old option (autocast around
            its gradient passes, fp16 on CUDA, bf16 elsewhere) and goes to the selector.
        checkpointing: Activation checkpointing during the passes (timm's
            ``set_grad_checkpointing``); changes only selectors with a backward pass.
        micro_batch: Process every batch in chunks of this many samples. Statistics
            (FPS, Wanda) and gradients (GPS, SNIP: chunk losses weighted by their share
            of the batch) add up to the whole batch's, so the mask is the same up to
            float rounding, except GPS's SupCon loss, whose pairs then stay inside a
            chunk. A plugin selector that does not handle micro-batches itself
            (``handles_micro_batch``) sees each chunk as a batch.
        keep_scores: A dict that receives every ranked tensor's scores (a CPU copy each, as the
            selector made them; on FSDP2, this rank's shards): for comparing selectors
            (:mod:`fps_profile.selection.agreement`).
        seed: Seed of everything random in the selection (:mod:`fps_profile.models.seeding`): the
            global generators are seeded with it for the selection's passes (dropout in a
            train-mode pass, random views) and given back as they were afterwards, and a
            selector with a ``seed`` option (``random``) gets it as that option (so
            ``select(..., "random", seed=3)`` means what it always meant). None: nothing is
            seeded here.
        **options: Selector options, e.g. ``seed=`` for random, ``loss=``/``views=`` for gps.

    Returns:
        A :class:`Mask` over every parameter of ``model``, True = trainable. The model
        is left exactly as found (:func:`left_as_found`), even when selection fails.
        On a model sharded with FSDP2 (DTensor parameters; every rank calls ``select``
        with its own slice of each global batch), the mask of this rank's shards, equal
        to that part of the single-process mask on the global batches
        (:mod:`fps_profile.measure.distributed`; :func:`fps_profile.measure.distributed.gather_mask`).

    Raises:
        UserError: Unknown selector or option, bad budget, no batches, missing labels,
            nothing eligible in the model.
    """
    from fps_profile.models.seeding import seeded

    with seeded(seed):  # the caller's random generators come back as they were
        return _select(model, batches, selector, k=k, fraction=fraction, scope=scope, amp=amp,
                       checkpointing=checkpointing, micro_batch=micro_batch, budget=budget, keep_scores=keep_scores,
                       seed=seed, **options)


def _select(model, batches, selector, *, k, fraction, scope, amp, checkpointing, micro_batch, budget, keep_scores,
            seed, **options) -> Mask:
    budget = make_budget(k, fraction, budget)
    if isinstance(amp, bool):  # GPS's own option, as before the cell-level knob existed
        options["amp"], amp = amp, None
    amp, micro_batch = parse_amp(amp), parse_micro_batch(micro_batch)
    if seed is not None:
        from fps_profile.models.seeding import takes_seed
        from fps_profile.selection.selectors import get

        if takes_seed(get(selector)):
            options["seed"] = int(seed)
    sel = create(selector, **options)
    sel.micro_batch = micro_batch if sel.handles_micro_batch else None
    scope = get_scope(scope)
    sharding.reshard(model)  # FSDP2: the sharded parameters on the modules (a no-op otherwise)
    roles = assign_roles(model, scope)
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], mod, attr) for n, (role, mod, attr) in roles.items() if role is Role.RANKED]
    # FSDP2 (DTensor parameters): each rank scores its shard, the mask it returns is its shard's.
    group = sharding.group_of(t.param for t in targets)

    data: Iterable = ()
    if sel.needs_data:
        if batches is None:
            raise UserError(f"selector {selector!r} needs batches of data")
        # Fail before any pass: a gradient selector given no batches would otherwise
        # report a misleading "received no gradient". Peeking keeps one-shot iterators whole.
        try:
            it = iter(batches)
        except TypeError:
            raise UserError(f"batches must be an iterable of batches, not {type(batches).__name__}") from None
        head = next(it, _EMPTY)
        if head is _EMPTY:
            raise UserError(f"selector {selector!r} got no batches (the iterable was empty)")
        first = next(iter(params.values()))
        data = itertools.chain([head], it)
        if group is not None:
            from fps_profile.selection.sharding.reduce import check_batches

            data = check_batches(data, group)
        data = Batches(data, first.device, first.dtype, split=None if sel.handles_micro_batch else micro_batch)

    out: dict[str, MaskEntry] = {}
    device = next(iter(params.values())).device if params else torch.device("cpu")
    with left_as_found(model):
        try:
            with knobs.checkpointing(model, checkpointing and sel.needs_backward), knobs.autocast(amp, device):
                with guarded(selector, "prepare"):
                    sel.prepare(model, data, targets)
            with breakdown_marks.phase("scoring"):
                scored = ((t.name, _score(sel, t, selector)) for t in targets)
                if keep_scores is not None:
                    scored = _kept(scored, keep_scores)
                out_axes = {t.name: t.out_axis for t in targets if t.out_axis}
                total = sum(t.param.numel() for t in targets)
                if group is None:
                    entries = budget.entries(scored, total=total, out_axes=out_axes)
                else:
                    from fps_profile.selection.sharding.budget import sharded_entries

                    entries = sharded_entries(budget, scored, params, total, out_axes, group)
                for name, entry in entries:
                    out[name] = entry
                    if entry.index is not None:
                        breakdown_marks.label(entry.index, "mask", name.rpartition(".")[0] or "(model)")
        finally:
            sel.release()
            if group is not None:
                sharding.reshard(model)  # the root keeps its all-gathered weights after a forward-only pass
    for name, (role, _, _) in roles.items():
        if role is not Role.RANKED:
            whole = MaskEntry.all if role is Role.TRAINABLE else MaskEntry.none
            out[name] = whole(sharding.local_shape(params[name]), device=params[name].device)
    meta = {"selector": selector, "budget": budget.describe(), "scope": scope.name,
            "model": type(model).__name__, "options": repr(sorted(options.items()))}
    if seed is not None:
        meta["seed"] = int(seed)
    if group is not None:
        import torch.distributed as dist

        meta |= {"rank": dist.get_rank(group), "world_size": dist.get_world_size(group)}
    return Mask({n: out[n] for n in params}, meta)


def _score(sel, target: Target, selector: str) -> torch.Tensor:
    with guarded(selector, f"score of {target.name!r}"):
        return sel.score(target)
