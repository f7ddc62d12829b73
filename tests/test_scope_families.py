"""The ``gps`` scope on timm families other than ViT: what each part of the model gets.

Models are built on the meta device (no memory, no compute), so this is fast. The
expectations are written by hand from each family's structure.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fps_profile import Role, Scope, UserError
from fps_profile.models.parts import find_classifier
from fps_profile.selection.scope import assign_roles, explain_roles

# Classifier module names per family, as the timm source defines them.
CLASSIFIERS = {
    "resnet18": ["fc"],
    "efficientnet_b0": ["classifier"],
    "mobilenetv3_small_050": ["classifier"],
    "densenet121": ["classifier"],
    "convnext_atto": ["head.fc"],
    "swin_tiny_patch4_window7_224": ["head.fc"],
    "regnetx_002": ["head.fc"],
    "levit_128s": ["head.linear", "head_dist.linear"],
    "deit_tiny_distilled_patch16_224": ["head", "head_dist"],
    "poolformer_s12": ["head.fc"],
    "coatnet_nano_rw_224": ["head.fc"],
    "inception_v3": ["fc"],
}
# Norm classes by hand (torch's and timm's), independent of fps_profile.models.parts.
NORM_CLASSES = {"BatchNorm1d", "BatchNorm2d", "BatchNormAct2d", "LayerNorm", "LayerNorm2d", "GroupNorm",
                "GroupNorm1", "GlobalResponseNorm", "RmsNorm"}


def meta_model(name: str, **kwargs) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def roles(model, scope="gps") -> dict[str, Role]:
    return {n: r for n, (r, _, _) in assign_roles(model, scope).items()}


@pytest.fixture(scope="module", params=sorted(CLASSIFIERS))
def family(request):
    return request.param, meta_model(request.param)


def test_classifier_is_found_from_timm_metadata(family):
    name, model = family
    assert list(find_classifier(model).modules) == CLASSIFIERS[name]


def test_classifier_trainable_whole_norms_frozen_rest_ranked_or_whole(family):
    name, model = family
    got = roles(model)
    params = dict(model.named_parameters())
    heads = CLASSIFIERS[name]
    for mod_name, module in model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{attr}"
            if type(module).__name__ in NORM_CLASSES:
                assert got[full] is Role.FROZEN, full  # bn1, BatchNormAct2d, LayerNorm2d, the BN in LeViT's head
            elif any(full.startswith(h + ".") for h in heads):
                assert got[full] is Role.TRAINABLE, full
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and attr == "weight" and "pos" not in full:
                assert got[full] is Role.RANKED, full  # conv_head and every backbone weight
    # every weight GPS's substring rules rank is still one module's ranked weight
    assert sum(r is Role.RANKED for r in got.values()) == sum(
        1 for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
        and not any(n == h or n.startswith(h + ".") for h in heads) and "cpb_mlp" not in n)
    assert set(got) == set(params)


def test_resnet_by_hand():
    model = meta_model("resnet18")
    got = roles(model)
    assert got["fc.weight"] is got["fc.bias"] is Role.TRAINABLE
    assert got["bn1.weight"] is got["bn1.bias"] is got["layer1.0.bn2.bias"] is Role.FROZEN
    assert got["layer2.0.downsample.1.weight"] is Role.FROZEN  # a BatchNorm inside a Sequential
    assert got["layer2.0.downsample.0.weight"] is Role.RANKED
    assert sum(r is Role.RANKED for r in got.values()) == 20  # 17 3x3/7x7 + 3 downsample convs


def test_efficientnet_conv_head_is_ranked_not_the_classifier():
    got = roles(meta_model("efficientnet_b0"))
    assert got["conv_head.weight"] is Role.RANKED  # 'head' in its name, but it is a backbone conv
    assert got["bn2.weight"] is got["bn2.bias"] is Role.FROZEN
    assert got["classifier.weight"] is Role.TRAINABLE
    assert got["blocks.1.0.se.conv_reduce.bias"] is Role.TRAINABLE  # a conv bias, as GPS trains biases


def test_position_tables_frozen_layer_scales_trainable():
    swin = roles(meta_model("swin_tiny_patch4_window7_224"))
    assert swin["layers.0.blocks.0.attn.relative_position_bias_table"] is Role.FROZEN  # has 'bias' in its name
    assert swin["layers.0.blocks.0.attn.qkv.bias"] is Role.TRAINABLE
    levit = roles(meta_model("levit_128s"))
    assert levit["stages.0.blocks.0.attn.attention_biases"] is Role.FROZEN
    convnext = roles(meta_model("convnext_atto"))
    assert convnext["stages.0.blocks.0.gamma"] is Role.TRAINABLE
    poolformer = roles(meta_model("poolformer_s12"))
    assert poolformer["stages.0.blocks.0.layer_scale1.scale"] is Role.TRAINABLE  # MetaFormer's Scale module
    assert poolformer["stages.0.blocks.0.norm1.weight"] is Role.FROZEN


def test_other_scopes_keep_their_meaning_on_a_cnn():
    model = meta_model("resnet18")
    everything = roles(model, "all-weights")
    assert everything["fc.weight"] is Role.RANKED and everything["fc.bias"] is Role.FROZEN
    assert everything["bn1.bias"] is Role.FROZEN
    with pytest.raises(UserError, match=r"ResNet has no parameter the 'attention' scope ranks.*fps-profile scope"):
        assign_roles(model, "attention")
    swin = roles(meta_model("swin_tiny_patch4_window7_224"), "attention")
    assert {r for n, r in swin.items() if n.startswith("head.fc.")} == {Role.TRAINABLE}
    assert swin["layers.0.blocks.0.attn.qkv.weight"] is Role.RANKED
    assert swin["layers.0.blocks.0.mlp.fc1.weight"] is Role.FROZEN


def test_model_without_metadata_falls_back_to_names():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("bn1", nn.BatchNorm2d(4))
    model.add_module("head", nn.Linear(4, 2))
    got = roles(model)
    assert got == {"stem.weight": Role.RANKED, "stem.bias": Role.TRAINABLE, "bn1.weight": Role.FROZEN,
                   "bn1.bias": Role.FROZEN, "head.weight": Role.TRAINABLE, "head.bias": Role.TRAINABLE}
    assert roles(model, Scope("gps-names", names_only=True))["bn1.bias"] is Role.TRAINABLE


def test_explain_roles_gives_reasons():
    ex = explain_roles(meta_model("resnet18"), "gps")
    assert ex["fc.weight"][:2] == (Role.TRAINABLE, "classifier")
    assert ex["bn1.weight"][:2] == (Role.FROZEN, "norm layer (BatchNorm2d)")
    assert ex["conv1.weight"][:2] == (Role.RANKED, "Conv2d weight")
