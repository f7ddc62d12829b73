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
  MetaFormer's ``Scale`` (parameter ``scale``).
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


@dataclass(frozen=True)
class Classifier:
    """Where a model's classifier is.

    Attributes:
        modules: Module names of the classifier (``()`` when it has none, e.g. ``num_classes=0``).
        source: ``"pretrained_cfg"``, ``"get_classifier"`` or ``"names"`` (no metadata:
            parameters whose name contains ``head``).
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
