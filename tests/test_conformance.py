"""Conformance: every selector on a zoo of 14 timm families, on cpu and on sim.

Each family is its smallest timm variant or a tiny configuration of it (timm's own
``test_*`` models where they exist, else the family's class with a few blocks of a
few channels, carrying the ``pretrained_cfg`` of its smallest registered variant),
built once per module and fed batches of 2 small images. Per family and selector
(``k=1``, the ``gps`` scope):

* the selection runs; the model is left exactly as found (``test_select_untouched``'s check);
* the classifier (named here by hand from timm's source) and every bias are trainable
  whole, no normalisation tensor, token or position table has a trainable entry, every
  other ``Linear``/``Conv2d`` weight trains exactly one entry per output row, and every
  other tensor is trainable whole or frozen whole;
* ``sim:cpu`` predicts exactly the bytes the cpu tracker measures for the same selection.

Per family: the inference phase runs; a sparse train step trains exactly the mask's
entries and changes no other; on ``sim:h100`` FPS needs at most a ``no_grad`` forward plus the
mask plus one tensor's scores, and GPS more. One sparse step also goes through the
isolated runner (marked slow).
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

from fps_profile import select

from fps_profile.measure import phases
from fps_profile.run.isolation import run_isolated
from fps_profile.rows.cell import Cell
from fps_profile.selection.selectors import list_selectors
from fps_profile.sim import Simulator
from fps_profile.selection.sparse import merge_sparse
from fps_profile.trackers import LiveTensorBytes

from test_scope_families import NORM_CLASSES
from test_select_untouched import assert_unchanged, snapshot

K1 = phases.BudgetSpec.parse("k=1")
CLASSES = 5
BATCH = 2


def _like(variant: str, model: nn.Module) -> nn.Module:
    """``model`` with the metadata ``timm.create_model(variant)`` would give it."""
    model.pretrained_cfg = timm.models.get_pretrained_cfg(variant).to_dict()
    return model


def _regnet():
    from timm.models.regnet import RegNet, RegNetCfg

    # one block per stage, grouped 3x3 convs of group width 4
    cfg = RegNetCfg(depth=4, w0=8, wa=16, wm=1.5, group_size=4, stem_width=8)
    return _like("regnetx_002", RegNet(cfg, num_classes=CLASSES))


def _mobilenetv3():
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    # mobilenetv3_small's block kinds (timm's _gen_mobilenet_v3), one block of few channels each:
    # depthwise-separable with SE, inverted residuals (3x3 ReLU, 5x5 hard-swish with SE), 1x1 head conv
    arch = [["ds_r1_k3_s2_e1_c8_se0.25_nre"], ["ir_r1_k3_s2_e4.5_c16_nre"], ["ir_r1_k5_s2_e4_c24_se0.25"],
            ["cn_r1_k1_s1_c48"]]
    se = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    return _like("mobilenetv3_small_050", MobileNetV3(
        decode_arch_def(arch), num_classes=CLASSES, stem_size=8, num_features=64,
        act_layer=get_act_layer("hard_swish"), se_layer=se))


def _mixer():
    from timm.models.mlp_mixer import MlpMixer

    return _like("mixer_s32_224", MlpMixer(num_classes=CLASSES, img_size=32, patch_size=8, embed_dim=32,
                                           num_blocks=2))


def _densenet():
    from timm.models.densenet import DenseNet

    return _like("densenet121", DenseNet(num_classes=CLASSES, growth_rate=8, block_config=(1, 1, 1, 1)))


def _poolformer():
    from timm.layers import GroupNorm1
    from timm.models.metaformer import MetaFormer

    # poolformer_s12's arguments (timm's metaformer.py), with one block of few channels per stage
    return _like("poolformer_s12", MetaFormer(
        num_classes=CLASSES, depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), downsample_norm=None, mlp_act=nn.GELU,
        mlp_bias=True, norm_layers=GroupNorm1, layer_scale_init_values=1e-5, res_scale_init_values=None,
        use_mlp_head=False))


def _timm(name: str, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)


@dataclass(frozen=True)
class Family:
    """A zoo entry: how to build it, its input size, and its classifier modules (by hand)."""

    build: object
    image: int
    classifier: tuple[str, ...]


VIT_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
ZOO = {
    "vit": Family(_timm("vit_tiny_patch16_224", **VIT_TINY), 32, ("head",)),
    "deit-distilled": Family(_timm("deit_tiny_distilled_patch16_224", **VIT_TINY), 32, ("head", "head_dist")),
    "swin": Family(_timm("swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4, embed_dim=16,
                         depths=(1, 1), num_heads=(1, 2)), 32, ("head.fc",)),
    "convnext": Family(_timm("test_convnext"), 32, ("head.fc",)),
    "resnet": Family(_timm("test_resnet"), 32, ("fc",)),
    "regnet": Family(_regnet, 32, ("head.fc",)),
    "efficientnet": Family(_timm("test_efficientnet"), 32, ("classifier",)),
    "mobilenetv3": Family(_mobilenetv3, 32, ("classifier",)),
    "mlp-mixer": Family(_mixer, 32, ("head",)),
    "eva02": Family(_timm("eva02_tiny_patch14_224", img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2),
                    28, ("head",)),
    "pvt-v2": Family(_timm("pvt_v2_b0", embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
                     32, ("head",)),
    "coatnet": Family(_timm("test_coatnet", img_size=32), 32, ("head.fc",)),
    "densenet": Family(_densenet, 32, ("classifier",)),
    "poolformer": Family(_poolformer, 32, ("head.fc",)),
}


@dataclass
class Built:
    model: nn.Module
    batch: tuple[torch.Tensor, torch.Tensor]
    classifier: tuple[str, ...]

    def params(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())


@pytest.fixture(scope="module", autouse=True)
def _quick_collections():
    # Simulator.measure collects garbage before a measured run, as the cuda backend does; in a test
    # process that is a pass over everything pytest, torch and timm made (~0.5 s a run). Freezing
    # moves the objects alive now out of the collector's sight; the zoo's tensors are made later.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module", params=sorted(ZOO))
def family(request) -> Built:
    spec = ZOO[request.param]
    torch.manual_seed(0)
    model = spec.build()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, spec.image, spec.image, generator=gen)
    return Built(model, (images, torch.tensor([0, 1])), spec.classifier)


POSITION_WORDS = ("pos_embed", "cls_token", "dist_token", "relative_position")


def expected_roles(built: Built) -> dict[str, str]:
    """Each parameter's role by hand: ``classifier``, ``norm``, ``position``, ``ranked``, ``bias``
    or ``whole``."""
    out = {}
    for mod_name, module in built.model.named_modules():
        for attr, _ in module.named_parameters(recurse=False):
            name = f"{mod_name}.{attr}" if mod_name else attr
            if any(name.startswith(m + ".") for m in built.classifier):
                out[name] = "classifier"
            elif type(module).__name__ in NORM_CLASSES:
                out[name] = "norm"
            elif any(w in name for w in POSITION_WORDS):
                out[name] = "position"
            elif attr == "weight" and isinstance(module, (nn.Linear, nn.Conv2d)):
                out[name] = "ranked"
            elif attr == "bias":
                out[name] = "bias"
            else:
                out[name] = "whole"  # layer scales, EVA-02's q_bias/v_bias, ...
    return out


def _tracked(model, inputs, fn):
    """``fn()`` and its peak live bytes on the cpu, counting the model and inputs as the sim does."""
    with LiveTensorBytes("cpu", include_existing=False) as live:
        for t in (*model.parameters(), *model.buffers(), *inputs):
            live.track(t, check_budget=False)
        live.reset_peak()
        out = fn()
    return out, live.peak


def _real_bytes(model, batch, selector):
    return _tracked(model, batch, lambda: select(model, [batch], selector, k=1))


def _sim_bytes(model, batch, selector, device="sim:cpu"):
    model = copy.deepcopy(model)  # sim.module() moves it to the meta device
    with Simulator(device) as sim:
        fake = sim.module(model)
        fake_batch = (torch.empty(batch[0].shape), torch.empty(batch[1].shape, dtype=torch.long))
        return sim.measure(phases.select_fn(fake, [fake_batch], selector, K1)).peak_bytes


def test_zoo_covers_the_norm_classes_it_uses(family):
    # every normalisation layer of the zoo is one the hand list names, so no norm goes unchecked
    owners = {type(m).__name__ for m in family.model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert {n for n in owners if "Norm" in n} <= NORM_CLASSES
    roles = expected_roles(family)
    assert "classifier" in roles.values() and "ranked" in roles.values()


@pytest.mark.parametrize("selector", list_selectors())
def test_selector_conforms_on_cpu_and_sim(family, selector):
    model = family.model
    before = snapshot(model)
    mask, real = _real_bytes(model, family.batch, selector)
    assert_unchanged(model, before)

    params = family.params()
    for name, role in expected_roles(family).items():
        m = mask[name]
        if role == "classifier":
            assert m.all(), f"classifier tensor {name} not trainable whole"
        elif role in ("norm", "position"):
            assert not m.any(), f"{role} tensor {name} has trainable entries"
        elif role == "bias":
            assert m.all(), f"bias {name} not trainable whole"
        elif role == "ranked":
            per_row = m.reshape(m.shape[0], -1).sum(1)
            assert torch.equal(per_row, torch.ones_like(per_row)), f"{name}: not one entry per row"
        else:
            assert m.all() or not m.any(), f"{name} ({tuple(params[name].shape)}) partly trainable"

    assert _sim_bytes(model, family.batch, selector) == real


def test_inference_phase_on_cpu(family):
    logits = phases.inference_fn(copy.deepcopy(family.model), family.batch[0])()
    assert logits.shape == (BATCH, CLASSES) and torch.isfinite(logits).all()


def test_sparse_train_step_changes_only_trainable_entries(family):
    images, labels = family.batch
    mask = select(family.model, [family.batch], "fps", k=1)
    model = copy.deepcopy(family.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = phases.train_step_fn(model, images, labels, mask=mask)
    assert step.trainable == mask.stats().trainable
    assert torch.isfinite(step())
    merge_sparse(model)
    changed = 0
    for name, p in model.named_parameters():
        moved = p.detach() != before[name]
        assert not (moved & ~mask[name]).any(), f"{name}: a frozen entry changed"
        changed += int(moved.sum())
    # AdamW moves every trainable entry with a gradient or a non-zero value (weight decay)
    assert changed >= 0.9 * mask.stats().trainable


def fps_overhead(built: Built) -> int:
    """Bytes FPS may hold beyond a no_grad forward, by hand: the mask (one byte per parameter),
    the float32 scores of the largest ranked tensor with its top-1 values and indices (scores are
    built one tensor at a time), and every ranked tensor's statistic (one float per input channel
    and kernel offset: ``in_features``, or ``in_channels * kh * kw`` for a convolution)."""
    modules = dict(built.model.named_modules())
    ranked = [n for n, r in expected_roles(built).items() if r == "ranked"]
    params = built.params()
    largest = max(ranked, key=lambda n: params[n].numel())
    stats = sum(params[n][0].numel() * getattr(modules[n.rpartition(".")[0]], "groups", 1) for n in ranked)
    mask = sum(p.numel() for p in params.values())
    return mask + 4 * params[largest].numel() + 12 * params[largest].shape[0] + 4 * stats


def test_fps_is_a_forward_plus_the_mask_and_one_tensors_scores(family):
    # Exact on the cpu tracker; on sim:h100 (CUDA's attention kernels, cuBLAS workspaces) a large
    # allocator block may hold up to 1 MiB more than it asked for. GPS needs a backward pass.
    overhead = fps_overhead(family)
    images = family.batch[0]
    model = copy.deepcopy(family.model)
    _, floor = _tracked(model, (images,), phases.inference_fn(model, images))
    _, fps = _real_bytes(model, family.batch, "fps")
    assert fps <= floor + overhead

    with Simulator("sim:h100") as sim:
        fake = sim.module(model)
        x, y = torch.empty(images.shape), torch.empty(BATCH, dtype=torch.long)
        floor = sim.measure(phases.inference_fn(fake, x), workspaces=("forward",)).peak_bytes
        fps = sim.measure(phases.select_fn(fake, [(x, y)], "fps", K1), workspaces=("forward",)).peak_bytes
        gps = sim.measure(phases.select_fn(fake, [(x, y)], "gps", K1), workspaces=("forward", "backward")).peak_bytes
    assert fps <= floor + overhead + (1 << 20)
    assert gps > fps


@pytest.mark.slow
def test_isolated_runner_cpu_and_sim_agree():
    # a sparse step after a selection, in worker processes, on a hybrid (MBConv + attention) family
    cell = dict(model="test_coatnet", batch_size=BATCH, phase="train_step", selector="fps", image_size=64,
                repeats=1)
    cpu, sim = (run_isolated(Cell(device=d, **cell)) for d in ("cpu", "sim:cpu"))
    assert cpu.status == sim.status == "ok", (cpu.error, sim.error)
    assert cpu.peak_allocated_bytes == sim.peak_allocated_bytes
    assert cpu.params_trainable == sim.params_trainable > 0
    assert cpu.flops == sim.flops > 0
