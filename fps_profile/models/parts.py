"""The parts of a model that a scope treats specially, found from the model itself.

Names alone mislead across families: ResNet's classifier is ``fc`` and
EfficientNet's ``classifier``, a BatchNorm may be called ``bn1``, and ``conv_head``
is a backbone convolution. So the scope asks the model:

* **classifier**: the module(s) named by timm's ``pretrained_cfg["classifier"]``
  (a name, a nested name such as ``head.fc``, or a tuple such as LeViT's
  ``("head.linear", "head_dist.linear")``), else what ``model.get_classifier()``
  returns; a model with neither falls back to names containing ``head``;
* **normalisation layers**, by type: torch's BatchNorm / InstanceNorm / LayerNorm /
  GroupNorm / RMSNorm and their subclasses (timm's ``LayerNorm2d``,
  ``BatchNormAct2d``, ``GroupNorm1``, ...), and any other leaf module whose class
  name contains ``Norm`` (timm's ``RmsNorm``, ``EvoNorm*``, ``FrozenBatchNorm2d``,
  ConvNeXt-V2's ``GlobalResponseNorm``);
* **position tables**: absolute position embeddings and relative position biases
  (``pos_embed*``, ``relative_position_bias_table``, LeViT/EfficientFormer
  ``attention_biases``, ``rel_pos_h``/``rel_pos_w``, Swin-V2's ``cpb_mlp``, timm's
  ``RelPosBias``/``RelPosMlp`` modules);
* **layer scales**: timm's ``LayerScale``/``LayerScale2d`` (parameter ``gamma``),
  MetaFormer's ``Scale`` (parameter ``scale``);
* on a causal language model (``transformers``), **the embeddings**
  (:class:`LMParts`): the token embedding, the position embedding where there is
  one (GPT-2's ``wpe``) and ``lm_head``, found by identity, so a ``lm_head`` tied
  to the token embedding is recognised as the one tensor it is. A language model
  has no classifier: its ``lm_head`` is the output embedding.

GPT-2's ``transformers.pytorch_utils.Conv1D`` is a linear layer whose weight is
stored ``[in, out]`` (it computes ``addmm(bias, x, weight)``): :func:`output_axis`
says which axis of a weight holds its output neurons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

_TORCH_NORMS = tuple(t for t in (_NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                                 getattr(nn, "RMSNorm", None)) if t is not None)
_POSITION_NAMES = re.compile(r"(^|[._])(pos_emb|position|relative_position|rel_pos|attention_biases|cpb_mlp|meta_mlp"
                             r"|patch_pos|pixel_pos)")
_POSITION_MODULES = {"RelPosBias", "RelPosBiasTf", "RelPosMlp", "PosEmbedRel"}
_LAYER_SCALE_MODULES = {"LayerScale", "LayerScale2d", "Scale"}


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (by type, see the module docstring)."""
    if isinstance(module, _TORCH_NORMS):
        return True
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or "Norm" not in type(module).__name__:
        return False
    return not any(True for _ in module.children())


def is_position(name: str, module: nn.Module) -> bool:
    """Whether parameter ``name`` (of ``module``) is a position embedding or relative position bias."""
    return type(module).__name__ in _POSITION_MODULES or bool(_POSITION_NAMES.search(name))


def is_layer_scale(module: nn.Module) -> bool:
    """Whether ``module`` is a layer-scale module (a learned per-channel residual scale)."""
    return type(module).__name__ in _LAYER_SCALE_MODULES


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (GPT-2's linear layer, weight ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def output_axis(module: nn.Module, attr: str = "weight") -> int:
    """The axis of parameter ``attr`` of ``module`` that indexes output neurons: 1 for a
    ``Conv1D`` weight (``[in, out]``), 0 for everything else (``[out, in, ...]``)."""
    return 1 if attr == "weight" and is_conv1d(module) else 0


@dataclass(frozen=True)
class LMParts:
    """The embeddings of a causal language model, by parameter name (as ``named_parameters()`` lists them).

    Attributes:
        token: The token embedding's weight.
        lm_head: The output embedding's parameters (``lm_head.weight``; the token
            embedding's name when tied, since a tied weight is listed once).
        tied: Whether ``lm_head`` and the token embedding are the same tensor.
        positions: Learned position embeddings (GPT-2's ``wpe.weight``).
    """

    token: str | None
    lm_head: tuple[str, ...]
    tied: bool
    positions: tuple[str, ...]

    def why(self, name: str) -> str | None:
        """What ``name`` is among the embeddings (None when it is none of them)."""
        if name in self.lm_head:
            return "lm_head (tied to the token embedding)" if self.tied else "lm_head"
        if name == self.token:
            return "token embedding"
        if name in self.positions:
            return "position embedding"
        return None


def find_lm_parts(model: nn.Module) -> LMParts | None:
    """The embeddings of a causal language model (None for any other model)."""
    from fps_profile.models.task import is_causal_lm

    if not is_causal_lm(model):
        return None
    by_id = {}
    for name, p in model.named_parameters():
        by_id.setdefault(id(p), name)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    token = by_id.get(id(getattr(inp, "weight", None)))
    head = tuple(by_id[id(p)] for p in (out.parameters() if out is not None else ()) if id(p) in by_id)
    owned = {id(p) for m in (inp, out) if m is not None for p in m.parameters()}
    positions = tuple(by_id[id(m.weight)] for m in model.modules()
                      if isinstance(m, nn.Embedding) and id(m.weight) not in owned and id(m.weight) in by_id)
    return LMParts(token, head, token is not None and token in head, positions)


@dataclass(frozen=True)
class Classifier:
    """Where a model's classifier is.

    Attributes:
        modules: Module names of the classifier (``()`` when it has none, e.g. ``num_classes=0``).
        source: ``"pretrained_cfg"``, ``"get_classifier"``, ``"causal-lm"`` (a language
            model: no classifier) or ``"names"`` (no metadata: parameters whose name
            contains ``head``).
    """

    modules: tuple[str, ...]
    source: str

    def owns(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the classifier."""
        if self.source == "names":
            return "head" in name
        return any(name == m or name.startswith(m + ".") for m in self.modules)


def find_classifier(model: nn.Module) -> Classifier:
    """The classifier of ``model`` from timm's metadata (see the module docstring)."""
    from fps_profile.models.task import is_causal_lm

    if is_causal_lm(model):
        return Classifier((), "causal-lm")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    named = cfg.get("classifier") if isinstance(cfg, dict) else None
    if named:
        found = []
        for n in ([named] if isinstance(named, str) else list(named)):
            try:
                model.get_submodule(n)
            except AttributeError:
                continue
            found.append(n)
        if found:
            return Classifier(tuple(found), "pretrained_cfg")
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        got = getter()
        mods = list(got) if isinstance(got, (tuple, list, nn.ModuleList)) else [got]
        ids = {id(m) for m in mods if isinstance(m, nn.Module)}
        return Classifier(tuple(n for n, m in model.named_modules() if id(m) in ids and n), "get_classifier")
    return Classifier((), "names")
