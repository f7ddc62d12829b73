"""Parameter scope: which tensors are ranked, fully trained or frozen.

The default, ``"gps"``, follows the public GPS code's name rules, first match wins:

1. names containing ``norm``, ``pos_embed`` or ``cls_token``: frozen
   (so ``norm1.bias`` is frozen);
2. names containing ``head``, ``bias`` or ``gamma``: fully trainable;
3. weights of every ``nn.Linear`` and ``nn.Conv2d`` (the patch embedding's 4-D
   kernel is ranked as ``[out, in*kh*kw]``): ranked, entry by entry;
4. anything else: frozen.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from torch import nn

from fps_profile.errors import UserError, did_you_mean
from fps_profile.registry import Registry


class Role(str, enum.Enum):
    """What the budget does with a parameter."""

    RANKED = "ranked"
    TRAINABLE = "trainable"
    FROZEN = "frozen"


@dataclass(frozen=True)
class Scope:
    """Name rules deciding each parameter's :class:`Role`.

    Rules are applied in order, first match wins: ``frozen`` substrings, then
    ``trainable`` substrings, then weights of ``rank_modules`` whose name matches
    ``rank_pattern`` are ranked; everything else is frozen.

    Attributes:
        name: Short name for results and mask metadata.
        frozen: Substrings of parameter names that freeze the whole tensor.
        trainable: Substrings that make the whole tensor trainable.
        rank_modules: Module types whose ``weight`` is ranked.
        rank_pattern: Regular expression a ranked name must match (``re.search``).
    """

    name: str
    frozen: tuple[str, ...] = ("norm", "pos_embed", "cls_token")
    trainable: tuple[str, ...] = ("head", "bias", "gamma")
    rank_modules: tuple[type, ...] = (nn.Linear, nn.Conv2d)
    rank_pattern: str = ""

    def role(self, name: str, module: nn.Module, attr: str) -> Role:
        """The role of parameter ``name`` (attribute ``attr`` of ``module``)."""
        if any(s in name for s in self.frozen):
            return Role.FROZEN
        if any(s in name for s in self.trainable):
            return Role.TRAINABLE
        if attr == "weight" and isinstance(module, self.rank_modules) and re.search(self.rank_pattern, name):
            return Role.RANKED
        return Role.FROZEN


SCOPES: Registry[Scope] = Registry("scope")
SCOPES.register("gps", Scope("gps"))
SCOPES.register("all-weights", Scope("all-weights", frozen=(), trainable=()))
SCOPES.register("attention", Scope("attention", trainable=("head",), rank_pattern=r"(^|\.)attn\."))
SCOPES.register("mlp", Scope("mlp", trainable=("head",), rank_pattern=r"(^|\.)mlp\."))


def get_scope(scope: str | Scope) -> Scope:
    """A :class:`Scope` by name (``gps``, ``all-weights``, ``attention``, ``mlp``) or as given."""
    if isinstance(scope, Scope):
        return scope
    if scope not in SCOPES:
        raise did_you_mean(scope, SCOPES.names(), "scope")
    return SCOPES.get(scope)


def assign_roles(model: nn.Module, scope: str | Scope) -> dict[str, tuple[Role, nn.Module, str]]:
    """Every parameter name of ``model`` mapped to ``(role, owning module, attribute)``."""
    scope = get_scope(scope)
    owners = {}
    for mod_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            owners.setdefault(f"{mod_name}.{attr}" if mod_name else attr, (module, attr))
    roles = {}
    for name, _ in model.named_parameters():
        module, attr = owners[name]
        roles[name] = (scope.role(name, module, attr), module, attr)
    if not any(r is Role.RANKED for r, _, _ in roles.values()):
        raise UserError(f"{type(model).__name__} has no parameter the {scope.name!r} scope ranks")
    return roles


