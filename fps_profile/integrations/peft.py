"""A :class:`~fps_profile.selection.mask.Mask` as a Hugging Face PEFT SHiRA adapter, and back.

SHiRA (``peft.tuners.shira``, tested with peft 0.21.2) wraps ``nn.Linear`` layers;
in each it trains a vector ``shira_weight`` of ``r * (m + n)`` values added to the
``m x n`` weight at fixed positions ``shira_indices``, with one ``r`` for the whole
adapter. ``modules_to_save`` trains whole modules (a trained copy of each). So a
mask converts exactly when

* every partly trainable tensor is an ``nn.Linear`` weight with ``r * (m + n)``
  trainable entries, the same ``r`` everywhere (the ``shira:R`` budget,
  :mod:`fps_profile.selection.shira`, makes such masks from any selector);
* every tensor trained whole lies in a module with a ``weight`` whose tensors are all
  trained whole (a classifier): that module goes into ``modules_to_save``.

What PEFT cannot hold: partly trainable convolutions, GPT-2's ``Conv1D`` (SHiRA
takes ``nn.Linear`` only), embeddings or layer scales; a bias trained whole
beside a weight that is not (``modules_to_save`` would train the weight too); a
module without a ``weight`` such as a LayerScale (peft 0.21.2 can train it in
``modules_to_save`` but not unload or merge it); parameters of the model's root
module. :func:`plan_shira` lists them; the conversion refuses such a mask unless
told to leave them out (``partial=True``). :func:`write_adapter`
(:mod:`fps_profile.integrations.peft_write`) writes an adapter directory, :func:`mask_from_adapter`
(:mod:`fps_profile.integrations.peft_read`) reads one back.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.integrations.peft_read import check_plain, mask_from_adapter
from fps_profile.selection.mask import Mask
from fps_profile.selection.mask_entry import MaskEntry

__all__ = ["ShiraPlan", "mask_from_adapter", "plan_shira", "require_peft", "shira_config", "to_shira", "unwrap"]

#: ``mask_type`` written to ``adapter_config.json`` (PEFT keeps the indices; the name is a label).
MASK_TYPE = "fps-profile"


def require_peft():
    """The ``peft`` module, or a one-line error saying how to install it."""
    try:
        import peft
    except ImportError:
        raise UserError("the PEFT integration needs the 'peft' package (pip install peft==0.21.2)") from None
    return peft


@dataclass(frozen=True)
class ShiraPlan:
    """What a SHiRA adapter holds of a mask.

    Attributes:
        r: SHiRA's ``r``: every target keeps ``r * (m + n)`` entries.
        targets: ``nn.Linear`` module name -> the trainable positions of its weight.
        modules_to_save: Modules trained whole (top-most ones; all their tensors trainable).
        whole: The parameters inside ``modules_to_save``.
        left_out: ``(parameter, why)`` for each tensor trainable in the mask that the
            adapter does not train (empty unless built with ``partial=True``).
    """

    r: int
    targets: dict[str, MaskEntry]
    modules_to_save: tuple[str, ...]
    whole: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]

    def trainable(self, model: nn.Module) -> int:
        """Scalars the adapter trains (SHiRA values plus whole modules)."""
        params = dict(model.named_parameters())
        return sum(e.count for e in self.targets.values()) + sum(params[n].numel() for n in self.whole)


def plan_shira(model: nn.Module, mask: Mapping[str, torch.Tensor], partial: bool = False) -> ShiraPlan:
    """Decide how ``mask`` becomes a SHiRA adapter on ``model`` (nothing is changed).

    Args:
        model: The plain (not yet PEFT-wrapped) model the mask was selected on.
        mask: A mask covering every parameter of ``model``.
        partial: Leave out what PEFT cannot express (listed in ``left_out``) instead of failing.

    Raises:
        UserError: The mask does not match the model; its Linear weights do not all keep
            ``r * (m + n)`` entries for one ``r``; it trains no Linear weight in part; or
            (without ``partial``) it trains something PEFT cannot express.
    """
    check_plain(model)
    mask = mask if isinstance(mask, Mask) else Mask(mask)
    mask.check(model)
    modules = dict(model.named_modules())
    names = {id(p): n for n, p in model.named_parameters()}
    owner = {}
    for mod_name, module in modules.items():
        for attr, p in module.named_parameters(recurse=False):
            owner.setdefault(names[id(p)], (mod_name, module, attr))

    def is_whole(e: MaskEntry) -> bool:
        return e.index is None and e.full

    # One r for every partly trainable Linear weight.
    r = first = None
    for name in mask:
        entry = mask.entry(name)
        mod_name, module, attr = owner[name]
        if entry.index is None or not (isinstance(module, nn.Linear) and attr == "weight"):
            continue
        m, n = entry.shape
        if entry.count % (m + n):
            raise UserError(f"SHiRA trains r*(m+n) entries of each Linear weight; {name!r} ({m}x{n}) has "
                            f"{entry.count:,} trainable, not a multiple of m+n = {m + n}; select with budget "
                            "'shira:R' (fps_profile.select(..., budget='shira:8'), or --shira 8)")
        if r is not None and entry.count // (m + n) != r:
            raise UserError(f"SHiRA has one r for all layers; {first!r} has r={r}, {name!r} has "
                            f"r={entry.count // (m + n)}; select with budget 'shira:R'")
        r, first = entry.count // (m + n), first or name
    if r is None:
        other = next((n for n in mask if mask.entry(n).index is not None), None)
        example = f" ({other!r} is in a {type(owner[other][1]).__name__})" if other else ""
        raise UserError(f"the mask trains no nn.Linear weight in part{example}; SHiRA adapts nn.Linear layers only")

    all_whole = {}
    for mod_name, module in modules.items():
        ps = [names[id(p)] for p in module.parameters()]
        all_whole[mod_name] = bool(ps) and all(is_whole(mask.entry(n)) for n in ps)
    # modules_to_save: the top-most such modules below the root (PEFT cannot wrap the model itself) that
    # have a `weight`: peft 0.21.2's unload and merge_and_unload copy `.weight` from every wrapped module
    # and fail without one (huggingface/peft#3213), e.g. on a LayerScale.
    fits = {m for m in modules if m and all_whole[m] and hasattr(modules[m], "weight")}
    saved = [m for m in modules if m in fits and not any(m.startswith(a + ".") for a in fits)]
    whole = {names[id(p)] for s in saved for p in modules[s].parameters()}

    targets, left_out = {}, []
    for name in mask:
        entry = mask.entry(name)
        mod_name, module, attr = owner[name]
        if entry.count == 0 or name in whole:
            continue
        kind = f"{type(module).__name__}.{attr}"
        if isinstance(module, nn.Linear) and attr == "weight" and entry.count == r * sum(entry.shape):
            targets[mod_name] = entry  # partly trainable (or, rarely, all m*n == r*(m+n) entries)
        elif not mod_name:
            left_out.append((name, "a parameter of the model itself; modules_to_save holds submodules"))
        elif is_whole(entry) and all_whole[mod_name]:
            left_out.append((name, f"{kind} trained whole, but peft 0.21.2 cannot unload or merge a module "
                                   "without a .weight in modules_to_save"))
        elif is_whole(entry):
            left_out.append((name, f"{kind} trained whole beside tensors of {mod_name!r} that are not; "
                                   "modules_to_save trains whole modules"))
        else:
            left_out.append((name, f"{kind} trained in part; SHiRA trains nn.Linear weights only"))
    if left_out and not partial:
        name, why = left_out[0]
        more = f" and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        raise UserError(f"PEFT SHiRA cannot train {name!r}{more} of this mask ({why}); leave them out "
                        "(partial=True) or select with scope 'shira' (fps_profile.selection.shira)")
    return ShiraPlan(r, targets, tuple(saved), tuple(sorted(whole)), tuple(left_out))


def _mask_fn(model: nn.Module, plan: ShiraPlan):
    """SHiRA's ``mask_fn(base_layer, r)``: the plan's positions as a 0/1 tensor of the weight's dtype.

    Each layer's positions are handed over once and then dropped, so the config PEFT keeps
    does not hold the mask alive (PEFT keeps its own indices).
    """
    by_layer = {id(model.get_submodule(n)): e for n, e in plan.targets.items()}
    plan_r = plan.r

    def mask_fn(base_layer: nn.Module, r: int, **_) -> torch.Tensor:
        entry = by_layer.pop(id(base_layer), None)
        if entry is None or r != plan_r:  # PEFT matched a module the plan did not ask for
            raise UserError(f"PEFT asked for a SHiRA mask of a layer the mask does not train ({base_layer})")
        w = base_layer.weight
        out = torch.zeros(entry.numel, dtype=w.dtype, device=w.device)
        out[entry.positions().to(w.device)] = 1
        return out.view(entry.shape)

    return mask_fn


def shira_config(model: nn.Module, plan: ShiraPlan):
    """A ``peft.ShiraConfig`` (with its ``mask_fn``) for ``plan`` on ``model``."""
    peft = require_peft()
    with warnings.catch_warnings():  # PEFT warns that it has no built-in mask of this type: mask_fn is set next
        warnings.filterwarnings("ignore", message=".*mask_type.*is not recognized")
        config = peft.ShiraConfig(r=plan.r, mask_type=MASK_TYPE, target_modules=sorted(plan.targets),
                                  modules_to_save=list(plan.modules_to_save) or None)
    config.mask_fn = _mask_fn(model, plan)
    return config


def to_shira(model: nn.Module, mask: Mapping[str, torch.Tensor], *, partial: bool = False,
             adapter_name: str = "default"):
    """Wrap ``model`` in a PEFT model whose SHiRA adapter trains exactly ``mask``'s entries.

    The adapter's trainable entries are the mask's trainable entries of ``nn.Linear``
    weights (zero-initialised deltas, PEFT's default) and the modules whose tensors the
    mask trains whole (``modules_to_save``). ``model`` is changed in place, as
    ``peft.get_peft_model`` does (``peft_model.unload()`` undoes it).

    Args:
        model: The plain model the mask was selected on.
        mask: The selection, e.g. ``fps_profile.select(model, batches, "gps", budget="shira:8")``.
        partial: Leave out what PEFT cannot express (warning how much) instead of failing.
        adapter_name: PEFT's adapter name.

    Returns:
        The ``peft.PeftModel``.

    Raises:
        UserError: As :func:`plan_shira`; peft not installed.
    """
    peft = require_peft()
    plan = plan_shira(model, mask, partial)
    if plan.left_out:
        warnings.warn(f"the SHiRA adapter leaves out {len(plan.left_out)} tensor(s) the mask trains "
                      f"(e.g. {plan.left_out[0][0]!r}: {plan.left_out[0][1]})", stacklevel=2)
    pm = peft.get_peft_model(model, shira_config(model, plan), adapter_name=adapter_name)
    base = pm.get_base_model()
    got = {n for n, m in base.named_modules() if isinstance(m, peft.tuners.shira.ShiraLayer)}
    saved = {n for n, m in base.named_modules() if type(m).__name__ == "ModulesToSaveWrapper"}
    if got != set(plan.targets) or saved != set(plan.modules_to_save):
        unwrap(base)
        odd = sorted((got ^ set(plan.targets)) | (saved ^ set(plan.modules_to_save)))
        raise UserError(f"PEFT's name matching wrapped other modules than the mask's (e.g. {odd[0]!r})")
    return pm


def unwrap(model: nn.Module) -> None:
    """Put the original modules back where PEFT wrapped them (in place).

    Not ``peft_model.unload()``: peft 0.21.2's unload puts the *copy* of a ``modules_to_save``
    module back, so the model would end with new parameter objects.
    """
    peft = require_peft()
    for name, module in list(model.named_modules()):
        if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer):
            original = module.get_base_layer()
        elif type(module).__name__ == "ModulesToSaveWrapper":
            original = module.original_module
        else:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, original)
    if "peft_config" in vars(model):
        del model.peft_config

