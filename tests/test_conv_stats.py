"""FPS and Wanda on every convolution and on weights used functionally.

Scores are compared with an independent float64 reference: the input as the
convolution sees it is padded by hand and unfolded with ``F.unfold``; weight
entry ``[o, i, a, b]`` of a conv with ``g`` groups reads input channel
``(o // (out / g)) * (in / g) + i`` at kernel offset ``(a, b)``, and its
statistic is the mean |x| (FPS) or the square root of the sum of x^2 (Wanda)
of that unfolded row over every output position of every sample.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, StdConv2d, create_conv2d
from torch import nn

from fps_profile import UserError, select

from fps_profile.measure import phases
from fps_profile.selection.selectors import Target, create
from fps_profile.sim import Simulator
from fps_profile.trackers import LiveTensorBytes
from numerics import sum_rtol


def explicit_padding(size, kernel, stride, dilation, padding):
    """(before, after) zeros per spatial dim, computed from the definitions."""
    out = []
    for s, k, st, d, p in zip(size, kernel, stride, dilation, padding):
        span = d * (k - 1)
        if p == "same":  # PyTorch: output size = input size, the odd zero at the end
            out.append((span // 2, span - span // 2))
        elif p == "tf-same":  # TensorFlow SAME, as timm's Conv2dSame pads
            total = max((math.ceil(s / st) - 1) * st + span + 1 - s, 0)
            out.append((total // 2, total - total // 2))
        elif p == "valid":
            out.append((0, 0))
        else:
            out.append((p, p))
    return out


def ref_unfolded_sums(x, kernel, stride=(1, 1), dilation=(1, 1), padding=(0, 0)):
    """(sum |x|, sum x^2) per (channel, ky, kx) and the number of output positions, float64."""
    x = x.double()
    pads = explicit_padding(x.shape[2:], kernel, stride, dilation, padding)
    x = F.pad(x, [v for before_after in reversed(pads) for v in before_after])
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [B, C*kh*kw, L]
    cols = cols.view(x.shape[0], x.shape[1], *kernel, -1)
    return cols.abs().sum((0, 4)), cols.pow(2).sum((0, 4)), x.shape[0] * cols.shape[-1]


def expand_groups(stat, weight):
    """The per-(channel, offset) statistic placed at every weight entry that reads it."""
    out_ch, per_group = weight.shape[:2]
    groups = stat.shape[0] // per_group
    channel = (torch.arange(out_ch) // (out_ch // groups))[:, None] * per_group + torch.arange(per_group)
    return stat[channel]


def ref_scores(weight, uses):
    """FPS and Wanda references from ``uses``: (sum |x|, sum x^2, count) of every call."""
    s1 = sum(u[0] for u in uses)
    s2 = sum(u[1] for u in uses)
    count = sum(u[2] for u in uses)
    w = weight.detach().double().abs()
    return w * expand_groups(s1 / count, weight), w * expand_groups(s2.sqrt(), weight)


def scores(model, batches, names):
    """Selector scores for ``names`` through the public Target/prepare/score interface."""
    out = {}
    for selector in ("fps", "wanda"):
        sel = create(selector)
        targets = [Target(n, model.get_parameter(n), model.get_submodule(n.rpartition(".")[0]), "weight")
                   for n in names]
        sel.prepare(model, [(b, None) for b in batches], targets)
        out[selector] = {t.name: sel.score(t) for t in targets}
        sel.release()
    return out


def stat_rtol(uses) -> float:
    """A selector's float32 statistic sums every use's positions (``count`` same-sign terms per entry,
    zero padding included), then divides or takes a root and multiplies by |w|; the reference sums the
    same float32 inputs in float64 (tests/numerics.py)."""
    return sum_rtol(int(sum(u[2] for u in uses)), torch.float32, extra_ops=3)


def check(model, batches, name, uses):
    got = scores(model, batches, [name])
    fps, wanda = ref_scores(model.get_parameter(name), uses)
    for selector, ref in (("fps", fps), ("wanda", wanda)):
        s = got[selector][name]
        assert s.shape == ref.shape and s.dtype == torch.float32
        torch.testing.assert_close(s.double(), ref, rtol=stat_rtol(uses), atol=0, msg=f"{selector} {name}")


# (conv kwargs, input spatial size): grouped, depthwise, strided, padded, dilated, 1x1, patches
CONVS = {
    "grouped": (dict(in_channels=8, out_channels=12, kernel_size=3, groups=4, padding=1), (7, 6)),
    "depthwise": (dict(in_channels=6, out_channels=6, kernel_size=5, groups=6, padding=2), (9, 8)),
    "depthwise_x2": (dict(in_channels=4, out_channels=8, kernel_size=3, groups=4), (6, 7)),
    "strided": (dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1), (9, 11)),
    "int_padding": (dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(1, 2), padding=(2, 0)), (5, 9)),
    "same_even": (dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), (6, 7)),
    "same_dilated": (dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", dilation=2, groups=2), (7, 7)),
    "valid": (dict(in_channels=3, out_channels=2, kernel_size=3, padding="valid"), (5, 6)),
    "dilated": (dict(in_channels=3, out_channels=4, kernel_size=3, dilation=(2, 3), padding=(1, 2), stride=2), (11,
                                                                                                                12)),
    "pointwise": (dict(in_channels=6, out_channels=4, kernel_size=1), (5, 5)),
    "pointwise_strided": (dict(in_channels=6, out_channels=4, kernel_size=1, stride=2), (5, 6)),
    "patches": (dict(in_channels=3, out_channels=8, kernel_size=4, stride=4), (8, 12)),
    "patches_ragged": (dict(in_channels=4, out_channels=4, kernel_size=3, stride=3, groups=2), (10, 8)),
    "wide_padding": (dict(in_channels=2, out_channels=3, kernel_size=2, padding=3), (2, 3)),
}


def _batches(channels, size, seed=0, sizes=(2, 3)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, channels, *size, generator=gen) for b in sizes]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's, about its own copy
@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_scores_equal_unfold_reference(case):
    kwargs, size = CONVS[case]
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    model = nn.Sequential(conv)
    batches = _batches(conv.in_channels, size)
    padding = (conv.padding,) * 2 if isinstance(conv.padding, str) else conv.padding
    uses = [ref_unfolded_sums(b, conv.kernel_size, conv.stride, conv.dilation, padding) for b in batches]
    check(model, batches, "0.weight", uses)


def test_channels_last_input_and_patch_fast_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 2, stride=2))
    batches = [b.contiguous(memory_format=torch.channels_last) for b in _batches(3, (6, 8))]
    check(model, batches, "0.weight", [ref_unfolded_sums(b, (2, 2), (2, 2)) for b in batches])


@pytest.mark.parametrize("make", [
    lambda: Conv2dSame(3, 4, 3, stride=2),
    lambda: Conv2dSame(4, 4, 3, stride=2, dilation=2, groups=4),
    lambda: create_conv2d(3, 5, 4, stride=2, padding="same"),  # timm's dynamic 'same' padding
], ids=["Conv2dSame", "Conv2dSame_depthwise_dilated", "create_conv2d_same"])
def test_timm_dynamic_same_padding(make):
    torch.manual_seed(0)
    conv = make()
    assert isinstance(conv, Conv2dSame)
    batches = _batches(conv.in_channels, (9, 8))
    uses = [ref_unfolded_sums(b, conv.kernel_size, conv.stride, conv.dilation, ("tf-same", "tf-same"))
            for b in batches]
    check(nn.Sequential(conv), batches, "0.weight", uses)


def test_conv1d_scores_equal_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2))
    batches = _batches(4, (13,))
    uses = [ref_unfolded_sums(b.unsqueeze(2), (1, 3), (1, 2), (1, 2), (0, 2)) for b in batches]
    got = scores(model, batches, ["0.weight"])
    fps, wanda = ref_scores(model[0].weight.unsqueeze(2), uses)
    torch.testing.assert_close(got["fps"]["0.weight"].double(), fps.squeeze(2), rtol=stat_rtol(uses), atol=0)
    torch.testing.assert_close(got["wanda"]["0.weight"].double(), wanda.squeeze(2), rtol=stat_rtol(uses), atol=0)


class SharedConv(nn.Module):
    """One grouped conv used twice: by its module, then functionally on a subsampled input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, groups=2, padding=1)

    def forward(self, x):
        a = self.conv(x)
        b = F.conv2d(x[:, :, ::2, ::2], weight=self.conv.weight, stride=1, padding="same", dilation=2, groups=2)
        return a.mean() + b.mean()


def test_conv_weight_used_twice_is_scored_over_both_uses():
    torch.manual_seed(0)
    model = SharedConv()
    batches = _batches(4, (9, 10))
    uses = []
    for b in batches:
        uses.append(ref_unfolded_sums(b, (3, 3), padding=(1, 1)))
        uses.append(ref_unfolded_sums(b[:, :, ::2, ::2], (3, 3), dilation=(2, 2), padding=("same", "same")))
    check(model, batches, "conv.weight", uses)


class EvaLike(nn.Module):
    """qkv used through F.linear by its parent (never called as a module); proj called twice."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 12)
        self.proj = nn.Linear(12, 5)

    def forward(self, x):
        h = F.linear(x, weight=self.qkv.weight, bias=None)
        return self.proj(h).sum() + self.proj(2 * h[:, :2] + 1).sum()


def _linear_use(x):
    t = x.double().reshape(-1, x.shape[-1])
    return t.abs().sum(0), t.pow(2).sum(0), t.shape[0]


def test_functional_linear_and_weight_used_twice():
    torch.manual_seed(0)
    model = EvaLike()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 5, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)]
    with torch.no_grad():
        hs = [F.linear(x, model.qkv.weight) for x in batches]
    check(model, batches, "qkv.weight", [_linear_use(x) for x in batches])
    check(model, batches, "proj.weight", [u for h in hs for u in (_linear_use(h), _linear_use(2 * h[:, :2] + 1))])
    # and through select(): both weights ranked, neither module hook needed
    mask = select(model, batches, "fps", k=1, scope="all-weights")
    assert mask["qkv.weight"].sum() == 12 and mask["proj.weight"].sum() == 5


class Standardised(nn.Module):
    """A weight-standardised conv (its raw weight never reaches F.conv2d) and an attention linear."""

    def __init__(self):
        super().__init__()
        self.mlp = StdConv2d(3, 4, 3, padding=1)
        self.attn = nn.Linear(4, 4)

    def forward(self, x):
        return self.attn(self.mlp(x).mean((2, 3)))


def test_weight_no_call_used_is_a_clear_error():
    model = Standardised()
    batches = _batches(3, (5, 5))
    with pytest.raises(UserError, match=r"selector 'fps' cannot score 'mlp.weight' \(StdConv2d\): no linear or "
                                        r"convolution call used it .* the 'attention', 'linear' or 'shira' scopes "
                                        r"skip it") as info:
        select(model, batches, "fps", k=1)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="'wanda' cannot score 'mlp.weight'"):
        select(model, batches, "wanda", k=1)
    assert select(model, batches, "fps", k=1, scope="attention")["mlp.weight"].sum() == 0


@pytest.mark.parametrize("ord", [1, 2])
@pytest.mark.parametrize("conv", [dict(kernel=(7, 7), stride=1, padding=3), dict(kernel=(3, 3), stride=2, padding=1),
                                  dict(kernel=(4, 4), stride=4, padding=0), dict(kernel=(1, 1), stride=1, padding=0)],
                         ids=["7x7", "3x3s2", "patches", "1x1"])
def test_conv_statistic_allocates_no_activation_sized_temporary(conv, ord):
    from fps_profile.selection.selectors.conv_stats import conv_sums

    x = torch.randn(4, 16, 32, 32)  # 256 KiB
    k, st, p = conv["kernel"], conv["stride"], conv["padding"]
    out = [(32 + 2 * p - kk) // st + 1 for kk in k]
    with LiveTensorBytes("cpu", include_existing=False) as live:  # counts what the call allocates
        sums, count = conv_sums(x, out, k, st, p, 1, ord)
    # the sums, a [C, W] row, its padding, and a partial that spares CUDA a staging buffer:
    # 1/out[-1] of the input for tiling convs, 1/rows ([B, C, W]) for the others
    partial = x.numel() * 4 // (out[-1] if st == k[0] else 32)
    assert 0 < live.peak <= 2 * 16 * 7 * 7 * 4 + 16 * 38 * 4 * 2 + partial
    ref = ref_unfolded_sums(x, k, (st, st), padding=(p, p))
    # a float32 sum over 4 images x every output position of same-sign terms (squared first for ord 2)
    rtol = sum_rtol(4 * math.prod(out), torch.float32, extra_ops=ord - 1)
    torch.testing.assert_close(sums.double(), ref[ord - 1], rtol=rtol, atol=0)
    assert count == ref[2]

# ----------------------------------------------------------------------------- sim

K1 = phases.BudgetSpec.parse("k=1")


def test_sim_fps_on_convnext_equals_real_cpu_bytes():
    # every statistic is a reduction of a view, so fake tensors allocate what real ones do
    model = timm.create_model("convnext_atto")
    images = torch.randn(2, 3, 64, 64)
    with LiveTensorBytes("cpu", include_existing=False) as live:
        for t in (*model.parameters(), *model.buffers(), images):
            live.track(t, check_budget=False)
        live.reset_peak()
        mask = phases.select_fn(model, [(images, None)], "fps", K1)()
    del mask
    with Simulator("sim:cpu") as sim:
        fake = sim.model("convnext_atto")
        fake_images = torch.empty(2, 3, 64, 64)
        predicted = sim.measure(phases.select_fn(fake, [(fake_images, None)], "fps", K1))
    assert predicted.peak_bytes == live.peak


@pytest.mark.parametrize("name", ["convnext_atto", "eva02_tiny_patch14_224"])
def test_sim_fps_peaks_at_the_inference_floor(name):
    # sim:h100 rows of models that used to fail: depthwise convs, F.linear(x, qkv.weight)
    with Simulator("sim:h100") as sim:
        model = sim.model(name)
        images, labels = sim.batch(model, 16, torch.float32)
        floor = sim.measure(phases.inference_fn(model, images), workspaces=("forward",)).peak_bytes
        fps = sim.measure(phases.select_fn(model, [(images, labels)], "fps", K1), workspaces=("forward",))
        mask_bytes = sum(p.numel() for p in model.parameters())
    assert fps.peak_bytes <= 1.02 * (floor + mask_bytes)
