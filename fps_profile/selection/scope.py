"""Parameter scope: which tensors are ranked, fully trained or frozen.

The default, ``"gps"``, follows the public GPS code's name rules, first match wins:

1. ``norm``, ``pos_embed``, ``cls_token``: frozen (so ``norm1.bias`` is frozen);
2. ``head``, ``bias``, ``gamma``: fully trainable;
3. weights of every ``nn.Linear`` and ``nn.Conv2d`` (a 4-D kernel is ranked as
   ``[out, in*kh*kw]``): ranked, entry by entry;
4. anything else: frozen.

GPS wrote those words for ViTs. So that they mean the same on every family, four
of them are read from the model (:mod:`fps_profile.models.parts`) as well as from names:

* ``norm`` also freezes every normalisation layer found by type (ResNet's ``bn1``,
  EfficientNet's ``BatchNormAct2d``, ConvNeXt's ``LayerNorm2d``, ...);
* ``pos_embed`` also freezes every position table: relative position bias tables
  (Swin, BEiT, CoAtNet/MaxViT), ``attention_biases`` (LeViT, EfficientFormer),
  ``rel_pos_h``/``rel_pos_w``, Swin-V2's ``cpb_mlp``;
* ``head`` means the classifier from timm's metadata (``pretrained_cfg["classifier"]``,
  else ``model.get_classifier()``): ResNet's ``fc``, EfficientNet's ``classifier``,
  ConvNeXt/Swin's ``head.fc``, both of LeViT's heads. Other names containing
  ``head`` (EfficientNet's ``conv_head``) are not the classifier and are ranked.
  Only a model with no timm metadata falls back to the substring;
* ``gamma`` also covers layer-scale modules (``LayerScale``, MetaFormer's ``Scale``).

On a plain ViT these give exactly the name rules' roles (a regression test holds
ViT-B/16 to it). ``names_only=True`` applies the words to names alone.

On a causal language model (``transformers``) the same rules give the LLM scope:

* the decoder projections are ranked: attention ``q/k/v/o_proj`` and MLP
  ``gate/up/down_proj`` (``nn.Linear``), GPT-2's ``c_attn``/``c_proj``/``c_fc``
  (``Conv1D``, a linear layer with a transposed weight: ranked as a Linear is);
* norms are frozen as on a ViT (RMSNorm/LayerNorm by type); biases are trained
  whole as on a ViT (GPT-2's projection biases, Qwen's q/k/v biases);
* a language model has no classifier (``head`` matches nothing); its embeddings
  (token, position, and ``lm_head``, tied to the token embedding or not) are
  frozen, after the ``trainable`` words and before ranking, in every scope;
* the word ``lm_head`` in ``trainable`` trains the output embedding whole
  (scope ``gps+lm-head``); a tied ``lm_head`` *is* the token embedding, so that
  one tensor is trained whole.
``fps-profile scope MODEL`` prints the result for any timm model.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from torch import nn

from fps_profile.errors import UserError, did_you_mean
from fps_profile.models.parts import (Classifier, LMParts, find_classifier, find_lm_parts, is_conv1d, is_layer_scale,
                               is_norm, is_position)
from fps_profile.registry import Registry


class Role(str, enum.Enum):
    """What the budget does with a parameter."""

    RANKED = "ranked"
    TRAINABLE = "trainable"
    FROZEN = "frozen"


@dataclass(frozen=True)
class Scope:
    """Rules deciding each parameter's :class:`Role`.

    Rules are applied in order, first match wins: ``frozen`` words, then
    ``trainable`` words, then weights of ``rank_modules`` whose name matches
    ``rank_pattern`` are ranked; everything else is frozen. A word matches names
    that contain it; ``norm``, ``pos_embed``, ``head`` and ``gamma`` also match
    model parts (see the module docstring) unless ``names_only``.

    Attributes:
        name: Short name for results and mask metadata.
        frozen: Words that freeze the whole tensor.
        trainable: Words that make the whole tensor trainable.
        rank_modules: Module types whose ``weight`` is ranked (with ``nn.Linear``, also
            ``transformers``' ``Conv1D``, GPT-2's linear layer).
        rank_pattern: Regular expression a ranked name must match (``re.search``).
        names_only: Match the words against names only, as the GPS code does.
        about: One line for ``fps-profile list scopes``.
    """

    name: str
    frozen: tuple[str, ...] = ("norm", "pos_embed", "cls_token")
    trainable: tuple[str, ...] = ("head", "bias", "gamma")
    rank_modules: tuple[type, ...] = (nn.Linear, nn.Conv2d)
    rank_pattern: str = ""
    names_only: bool = False
    about: str = field(default="", compare=False)

    def decide(self, name: str, module: nn.Module, attr: str,
               classifier: Classifier | None = None, lm: LMParts | None = None) -> tuple[Role, str]:
        """The role of parameter ``name`` (attribute ``attr`` of ``module``) and why.

        Args:
            classifier: Where the model's classifier is (:func:`fps_profile.models.parts.find_classifier`);
                None reads ``head`` as a name substring.
            lm: A language model's embeddings (:func:`fps_profile.models.parts.find_lm_parts`), or None.
        """
        by_model = not self.names_only
        for word in self.frozen:
            if word in name:
                return Role.FROZEN, f"name has {word!r}"
            if by_model and word == "norm" and is_norm(module):
                return Role.FROZEN, f"norm layer ({type(module).__name__})"
            if by_model and word == "pos_embed" and is_position(name, module):
                return Role.FROZEN, "position table"
        for word in self.trainable:
            if word == "head" and by_model and classifier is not None and classifier.source != "names":
                if classifier.owns(name):
                    return Role.TRAINABLE, "classifier"
                continue
            if word == "lm_head" and by_model and lm is not None:
                if name in lm.lm_head:
                    return Role.TRAINABLE, lm.why(name)
                continue
            if word in name:
                return Role.TRAINABLE, f"name has {word!r}"
            if by_model and word == "gamma" and is_layer_scale(module):
                return Role.TRAINABLE, f"layer scale ({type(module).__name__})"
        embedding = lm.why(name) if by_model and lm is not None else None
        if embedding:
            return Role.FROZEN, embedding
        if attr == "weight" and re.search(self.rank_pattern, name) and (
                isinstance(module, self.rank_modules) or (nn.Linear in self.rank_modules and is_conv1d(module))):
            return Role.RANKED, f"{type(module).__name__} weight"
        return Role.FROZEN, "not ranked"

    def role(self, name: str, module: nn.Module, attr: str, classifier: Classifier | None = None,
             lm: LMParts | None = None) -> Role:
        """The role of parameter ``name`` (attribute ``attr`` of ``module``)."""
        return self.decide(name, module, attr, classifier, lm)[0]


SCOPES: Registry[Scope] = Registry("scope")
SCOPES.register("gps", Scope("gps", about="GPS: Linear/Conv2d weights ranked; biases, layer scales and the "
                                    "classifier trained whole; norms and position tables frozen (a language "
                                    "model's embeddings and lm_head too)"))
SCOPES.register("gps+lm-head", Scope("gps+lm-head", trainable=("head", "bias", "gamma", "lm_head"),
                                     about="gps, and a language model's lm_head trained whole (tied: the token "
                                     "embedding, the same tensor)"))
SCOPES.register("linear", Scope("linear", rank_modules=(nn.Linear,),
                                about="gps with only Linear weights ranked (GPT-2's Conv1D too): convolutions such "
                                "as a ViT's patch embedding frozen; for selectors that read Linear inputs only"))
SCOPES.register("all-weights", Scope("all-weights", frozen=(), trainable=(),
                                     about="every Linear/Conv2d weight ranked, the classifier's too; the rest frozen "
                                     "(a language model's embeddings and lm_head too)"))
SCOPES.register("attention", Scope("attention", trainable=("head",), rank_pattern=r"(^|\.)(self_)?attn\.",
                                   about="Linear/Conv2d weights under an 'attn' (or 'self_attn') module ranked; the "
                                         "classifier "
                                   "trained whole; the rest frozen"))
SCOPES.register("mlp", Scope("mlp", trainable=("head",), rank_pattern=r"(^|\.)mlp\.",
                             about="Linear/Conv2d weights under an 'mlp' module ranked; the classifier "
                             "trained whole; the rest frozen"))
SCOPES.register("shira", Scope("shira", trainable=("head",), rank_modules=(nn.Linear,),
                               about="what PEFT SHiRA can train: nn.Linear weights ranked, the classifier trained "
                               "whole (modules_to_save); biases, norms, layer scales, convolutions frozen"))


def get_scope(scope: str | Scope) -> Scope:
    """A :class:`Scope` by name (``gps``, ``gps+lm-head``, ``all-weights``, ``attention``, ``mlp``, ``shira``) or
    as given."""
    if isinstance(scope, Scope):
        return scope
    if scope not in SCOPES:
        raise did_you_mean(scope, SCOPES.names(), "scope")
    return SCOPES.get(scope)


def explain_roles(model: nn.Module, scope: str | Scope) -> dict[str, tuple[Role, str, nn.Module, str]]:
    """Every parameter name of ``model`` mapped to ``(role, reason, owning module, attribute)``."""
    scope = get_scope(scope)
    classifier, lm = find_classifier(model), find_lm_parts(model)
    owners = {}
    for mod_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            owners.setdefault(f"{mod_name}.{attr}" if mod_name else attr, (module, attr))
    out = {}
    for name, _ in model.named_parameters():
        module, attr = owners[name]
        out[name] = (*scope.decide(name, module, attr, classifier, lm), module, attr)
    return out


def assign_roles(model: nn.Module, scope: str | Scope) -> dict[str, tuple[Role, nn.Module, str]]:
    """Every parameter name of ``model`` mapped to ``(role, owning module, attribute)``.

    Raises:
        UserError: The scope ranks nothing in ``model``.
    """
    scope = get_scope(scope)
    roles = {n: (r, mod, attr) for n, (r, _, mod, attr) in explain_roles(model, scope).items()}
    if not any(r is Role.RANKED for r, _, _ in roles.values()):
        hint = "" if scope.name == "all-weights" else "; try --scope all-weights"
        raise UserError(f"{type(model).__name__} has no parameter the {scope.name!r} scope ranks (it ranks "
                        f"weights of {', '.join(t.__name__ for t in scope.rank_modules)}{hint}; "
                        "'fps-profile scope MODEL' shows every tensor's role)")
    return roles
