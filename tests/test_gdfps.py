"""GD-FPS (``gd-fps``) against independent float64 references.

The references take every linear/convolution input with plain forward hooks (convolutions
unfolded with ``F.unfold``, as in test_conv_stats), once on "pre-training" batches (the
anchor ``a0``) and once on the downstream batches (``a``), and score
``|w| * a / (a0 + eps)`` (``growth="ratio"``) or ``|w| * (a - a0) / (a0 + eps)``
(``growth="change"``) in float64. They share no code with ``fps_profile.selection.selectors``.

Tolerance of the score values (float32 against float64). The activations are the same
float32 values in both (the same model on the same batch shapes). A mean of ``n``
non-negative float32 terms is within ``n * U`` (relative) of the exact mean, whatever
the summation order (the classic bound ``(n - 1) U`` for a sum plus one rounding for the
division; ``U = 2**-24``); the anchor's mean adds ``n0 * U``; adding eps, dividing and
multiplying by ``|w|`` add ``3 U``. So ``rtol = (n + n0 + 4) * U``, about 4e-5 here, of
the ratio score ``|w| * a / (a0 + eps)``; ``growth="change"`` subtracts 1 from a ratio
near 1 and is held to the same absolute error. Masks are compared away from ties with
test_selectors' ``assert_mask_matches``.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fps_profile import UserError, select
from fps_profile.cli import main
from fps_profile.selection.scope import Role, assign_roles
from fps_profile.selection.selectors import Target, create, get, list_selectors
from fps_profile.selection.selectors._anchor import FORMAT, FORMAT_VERSION
from fps_profile.selection.selectors.gdfps import anchor_stats, save_anchor

from conftest import make_batches, make_tiny_vit
from test_conv_stats import expand_groups, ref_unfolded_sums
from test_select_untouched import assert_unchanged, make_bn_model, snapshot
from test_select_untouched import batches as bn_batches
from numerics import assert_mask_matches, mask_mismatches
from test_selectors import RANKED, ref_input_stats, uneven_batches

U = 2.0 ** -24
EPS = 1e-6


def pretraining_batches():
    """A shifted, rescaled input distribution, so the anchor is not the downstream statistic."""
    return [(1.7 * x + 0.4, y) for x, y in make_batches(2, 5, seed=11)]


def ranked_targets(model, scope="gps"):
    params = dict(model.named_parameters())
    return [Target(n, params[n], m, a) for n, (r, m, a) in assign_roles(model, scope).items() if r is Role.RANKED]


def gd_scores(model, batches, targets, **options):
    sel = create("gd-fps", **options)
    sel.prepare(model, batches, targets)
    out = {t.name: sel.score(t) for t in targets}
    sel.release()
    return out


def ref_means(stats):
    """name -> (mean |x| per feature in float64, token count) from ``ref_input_stats``."""
    return {n: (s1 / count, count) for n, (s1, _, count) in stats.items()}


def ref_vit_scores(model, down, pre, growth="ratio", names=RANKED):
    a, a0 = ref_means(ref_input_stats(model, down, names)), ref_means(ref_input_stats(model, pre, names))
    params = dict(model.named_parameters())
    out, bound, rtol = {}, {}, {}
    for n in names:
        w = params[n].detach().double().abs().reshape(params[n].shape[0], -1)
        ratio = a[n][0] / (a0[n][0] + EPS)
        out[n] = (w * (ratio - 1 if growth == "change" else ratio)).view(params[n].shape)
        bound[n] = (w * ratio).view(params[n].shape)
        rtol[n] = (a[n][1] + a0[n][1] + 4) * U
    return out, bound, rtol


def assert_scores_close(got, ref, bound, rtol):
    """``|got - ref| <= rtol * bound`` entry by entry (bound: the ratio score, see the module docstring)."""
    for n, r in ref.items():
        g = got[n]
        assert g.shape == r.shape and g.dtype == torch.float32, n
        err = (g.double() - r).abs()
        limit = rtol[n] * bound[n] + 1e-30
        assert (err <= limit).all(), f"{n}: worst error {float((err / limit).max()):.2f} x the bound"


@pytest.fixture
def anchor_file(tmp_path, tiny_vit):
    return save_anchor(tiny_vit, pretraining_batches(), tmp_path / "anchor.safetensors")


# ----------------------------------------------------------------------------- registry, CLI

def test_registered_forward_only_and_listed(capsys):
    cls = get("gd-fps")
    assert "gd-fps" in list_selectors()
    assert (cls.needs_backward, cls.needs_data, cls.needs_labels, cls.handles_micro_batch) == (False, True, False, True)
    assert cls.options() == {"anchor": None, "growth": "ratio", "eps": 1e-6}
    assert main(["list", "selectors", "gd-*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].split()[:2] == ["gd-fps", "forward"]


def test_cli_select_with_a_missing_anchor_fails_in_one_line(capsys, tmp_path):
    assert main(["select", "--selector", "gd-fps", "-o", f"anchor={tmp_path}/none.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# ----------------------------------------------------------------------------- the anchor file

def test_anchor_file_holds_the_reference_means(tiny_vit, anchor_file):
    names = [n for n, p in tiny_vit.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    assert "head.weight" in names  # the default scope, all-weights, covers every built-in scope's
    ref = ref_means(ref_input_stats(tiny_vit, pretraining_batches(), names))
    with safe_open(str(anchor_file), framework="pt") as f:
        header = f.metadata()
        assert sorted(f.keys()) == sorted(names)
        tokens = json.loads(header["tokens"])
        for n in names:
            mean, count = ref[n]
            got = f.get_tensor(n)
            assert got.dtype == torch.float32 and tokens[n] == count
            # flattened as weight.reshape(out, -1) reads it: [in] or [in_channels * kh * kw]
            torch.testing.assert_close(got.double().reshape(-1), mean, rtol=(count + 1) * U, atol=0)
    assert (header["format"], header["version"], header["model"], header["scope"]) == (
        FORMAT, FORMAT_VERSION, "VisionTransformer", "all-weights")


def test_anchor_stats_with_micro_batches_and_image_only_batches(tiny_vit):
    whole, tokens = anchor_stats(tiny_vit, pretraining_batches(), scope="gps")
    chunked, tokens2 = anchor_stats(tiny_vit, [x for x, _ in pretraining_batches()], scope="gps", micro_batch=2)
    assert tokens == tokens2 and list(whole) == RANKED
    for n in RANKED:  # two float32 means of the same terms, summed in different chunks
        torch.testing.assert_close(chunked[n], whole[n], rtol=2 * (tokens[n] + 1) * U, atol=0)


def test_save_anchor_leaves_a_batchnorm_model_untouched(tmp_path):
    model = make_bn_model()
    before = snapshot(model)
    save_anchor(model, bn_batches(), tmp_path / "a.safetensors")
    assert_unchanged(model, before)
    before = snapshot(model)
    mask = select(model, bn_batches(), "gd-fps", k=1, anchor=str(tmp_path / "a.safetensors"))
    assert mask.stats().trainable > 0
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- scores, tiny ViT

@pytest.mark.parametrize("growth", ["ratio", "change"])
def test_scores_equal_the_reference_on_tiny_vit(tiny_vit, anchor_file, growth):
    data = uneven_batches()
    got = gd_scores(tiny_vit, data, ranked_targets(tiny_vit), anchor=str(anchor_file), growth=growth)
    assert list(got) == RANKED
    assert_scores_close(got, *ref_vit_scores(tiny_vit, data, pretraining_batches(), growth))


def test_reference_is_discriminating(tiny_vit, anchor_file):
    """FPS's scores (no anchor) and the inverse ratio a0 / a fail the same value comparison."""
    data = uneven_batches()
    ref, bound, rtol = ref_vit_scores(tiny_vit, data, pretraining_batches())
    fps = gd_scores(tiny_vit, data, ranked_targets(tiny_vit))
    with pytest.raises(AssertionError):
        assert_scores_close(fps, ref, bound, rtol)
    inverse, _, _ = ref_vit_scores(tiny_vit, pretraining_batches(), data)
    with pytest.raises(AssertionError):
        assert_scores_close({n: s.float() for n, s in inverse.items()}, ref, bound, rtol)


@pytest.mark.parametrize("budget", [{"k": 1}, {"k": 3}, {"fraction": 0.05}])
def test_mask_matches_the_reference(tiny_vit, anchor_file, budget):
    data = uneven_batches()
    ref, _, rtol = ref_vit_scores(tiny_vit, data, pretraining_batches())
    tol = max(rtol.values())  # a score's error is at most rtol of itself, so of the tensor's largest
    mask = select(tiny_vit, data, "gd-fps", anchor=str(anchor_file), **budget)
    assert_mask_matches(mask, ref, tol=tol, **budget)
    assert mask.meta["selector"] == "gd-fps" and str(anchor_file) in mask.meta["options"]
    # the anchor changes the choice: FPS's mask is not this one
    assert mask_mismatches(select(tiny_vit, data, "fps", **budget), ref, tol=tol, **budget)


def test_change_and_ratio_differ_under_a_global_fraction(tiny_vit, anchor_file):
    data = uneven_batches()
    change, _, rtol = ref_vit_scores(tiny_vit, data, pretraining_batches(), "change")
    tol = max(rtol.values())  # held to the ratio's absolute error (module docstring)
    mask = select(tiny_vit, data, "gd-fps", fraction=0.05, anchor=str(anchor_file), growth="change")
    assert_mask_matches(mask, change, fraction=0.05, tol=tol)
    assert mask_mismatches(select(tiny_vit, data, "gd-fps", fraction=0.05, anchor=str(anchor_file)),
                           change, fraction=0.05, tol=tol)


@pytest.mark.parametrize("budget", [{"k": 2}, {"fraction": 0.05}])
def test_micro_batches_give_the_same_mask(tiny_vit, anchor_file, budget):
    data = uneven_batches()
    ref, _, rtol = ref_vit_scores(tiny_vit, data, pretraining_batches())
    tol = max(rtol.values())
    sizes = []
    hook = tiny_vit.patch_embed.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    try:
        chunked = select(tiny_vit, data, "gd-fps", micro_batch=2, anchor=str(anchor_file), **budget)
    finally:
        hook.remove()
    assert max(sizes) == 2 and sum(sizes) == sum(x.shape[0] for x, _ in data)
    whole = select(tiny_vit, data, "gd-fps", anchor=str(anchor_file), **budget)
    assert_mask_matches(chunked, ref, tol=tol, **budget)
    assert_mask_matches(whole, ref, tol=tol, **budget)


# ----------------------------------------------------------------------------- conv net

class ConvNet(nn.Module):
    """Dense 3x3, grouped strided 3x3, depthwise 5x5 and a 2x2 patch conv, then a linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
        self.c3 = nn.Conv2d(12, 12, 5, padding=2, groups=12)
        self.c4 = nn.Conv2d(12, 6, 2, stride=2)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = F.gelu(self.c3(F.gelu(self.c2(F.gelu(self.c1(x))))))
        return self.fc(self.c4(x).mean((2, 3)))


CONVS = ("c1", "c2", "c3", "c4")


def ref_conv_means(model, batches):
    """name -> (per-(channel, offset) mean |x| in float64, token count), by unfolding each input."""
    uses = {n: [] for n in CONVS}
    hooks = [getattr(model, n).register_forward_pre_hook(
        lambda m, a, n=n: uses[n].append(ref_unfolded_sums(a[0], m.kernel_size, m.stride, m.dilation, m.padding)))
        for n in CONVS]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {n: (sum(u[0] for u in uses[n]) / sum(u[2] for u in uses[n]), sum(u[2] for u in uses[n]))
            for n in CONVS}


def test_conv_scores_equal_the_unfold_reference(tmp_path):
    torch.manual_seed(0)
    model = ConvNet().eval()
    gen = torch.Generator().manual_seed(3)
    pre = [1.5 * torch.randn(b, 3, 12, 11, generator=gen) + 0.5 for b in (3, 2)]
    down = [torch.randn(b, 3, 12, 11, generator=gen) for b in (2, 4)]
    path = save_anchor(model, pre, tmp_path / "conv.safetensors")
    targets = [Target(f"{n}.weight", getattr(model, n).weight, getattr(model, n), "weight") for n in CONVS]
    got = gd_scores(model, [(x, None) for x in down], targets, anchor=str(path))
    a, a0 = ref_conv_means(model, down), ref_conv_means(model, pre)
    ref, bound, rtol = {}, {}, {}
    for n in CONVS:
        w = getattr(model, n).weight
        ratio = expand_groups(a[n][0] / (a0[n][0] + EPS), w)
        ref[f"{n}.weight"] = bound[f"{n}.weight"] = w.detach().double().abs() * ratio
        rtol[f"{n}.weight"] = (a[n][1] + a0[n][1] + 4) * U
    assert_scores_close(got, ref, bound, rtol)
    mask = select(model, down, "gd-fps", k=2, anchor=str(path), scope="all-weights")
    assert_mask_matches({n: mask[n] for n in ref}, ref, k=2, tol=max(rtol.values()))


# ----------------------------------------------------------------------------- language models

def lm_ref_means(model, batches, kinds):
    """name.weight -> (mean |x| over every token, in float64, token count), by forward hooks."""
    rows: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: rows.setdefault(name, []).append(
        args[0].detach().reshape(-1, args[0].shape[-1]).double()))
        for name, m in model.named_modules() if isinstance(m, kinds)]
    model.eval()
    with torch.no_grad():
        for ids, _ in batches:
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {f"{n}.weight": (torch.cat(xs).abs().mean(0), sum(x.shape[0] for x in xs)) for n, xs in rows.items()}


@pytest.mark.parametrize("name", ["hf:llama-tiny", "hf:gpt2-tiny"])
def test_scores_equal_the_reference_on_tiny_language_models(tmp_path, name):
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    from fps_profile.models.hf import token_batches
    from fps_profile.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    pre, down = token_batches(model, 3, 10, num_batches=2, seed=5), token_batches(model, 2, 12, num_batches=2)
    path = save_anchor(model, pre, tmp_path / "lm.safetensors", scope="gps")
    targets = ranked_targets(model)
    assert any(t.out_axis == 1 for t in targets) == (name == "hf:gpt2-tiny")  # GPT-2's Conv1D: [in, out]
    got = gd_scores(model, down, targets, anchor=str(path))
    a, a0 = lm_ref_means(model, down, (nn.Linear, Conv1D)), lm_ref_means(model, pre, (nn.Linear, Conv1D))
    ref, bound, rtol = {}, {}, {}
    for t in targets:
        ratio = a[t.name][0] / (a0[t.name][0] + EPS)
        w = t.param.detach().double().abs()
        ref[t.name] = bound[t.name] = w * (ratio[:, None] if t.out_axis == 1 else ratio)
        rtol[t.name] = (a[t.name][1] + a0[t.name][1] + 4) * U
    assert_scores_close(got, ref, bound, rtol)


# ----------------------------------------------------------------------------- fallback

def test_without_an_anchor_it_ranks_as_fps(tiny_vit):
    data = uneven_batches()
    targets = ranked_targets(tiny_vit)
    fps = create("fps")
    fps.prepare(tiny_vit, data, targets)
    for name, s in gd_scores(tiny_vit, data, targets).items():
        assert torch.equal(s, fps.score(next(t for t in targets if t.name == name)))
    for budget in ({"k": 1}, {"fraction": 0.05}):
        a, b = select(tiny_vit, data, "gd-fps", **budget), select(tiny_vit, data, "fps", **budget)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_change_without_an_anchor_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"growth='change' needs an anchor file") as info:
        create("gd-fps", growth="change")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- bad input

def _rewrite(src, dst, change_tensors=None, change_header=None):
    with safe_open(str(src), framework="pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if change_tensors:
        change_tensors(tensors)
    if change_header:
        change_header(header)
    save_file(tensors, str(dst), metadata=header)
    return dst


def _bad_anchors(tmp_path, good):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(2)}, str(other), metadata={"format": "something-else"})

    def negative(t):
        t["blocks.0.mlp.fc1.weight"][3] = -0.5

    def nan(t):
        t["blocks.1.attn.proj.weight"][0] = float("nan")

    def reshaped(t):
        t["blocks.0.mlp.fc2.weight"] = t["blocks.0.mlp.fc2.weight"][:-1]

    def dropped(t):
        del t["patch_embed.proj.weight"]

    return {
        "missing": (tmp_path / "nope.safetensors", "does not exist"),
        "garbage": (garbage, "not a readable safetensors file"),
        "foreign": (other, "not a GD-FPS anchor file"),
        "version": (_rewrite(good, tmp_path / "v.safetensors", change_header=lambda h: h.update(version="9")),
                    "format version '9'"),
        "missing tensor": (_rewrite(good, tmp_path / "d.safetensors", dropped),
                           "has no statistic for 'patch_embed.proj.weight'"),
        "shape": (_rewrite(good, tmp_path / "s.safetensors", reshaped), r"has shape \[127\], but its input"),
        "negative": (_rewrite(good, tmp_path / "n.safetensors", negative), "holds -0.5"),
        "nan": (_rewrite(good, tmp_path / "nan.safetensors", nan), "holds nan"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "foreign", "version", "missing tensor", "shape",
                                  "negative", "nan"])
def test_a_bad_anchor_file_fails_in_one_line(tiny_vit, anchor_file, tmp_path, case):
    path, message = _bad_anchors(tmp_path, anchor_file)[case]
    before = {n: p.detach().clone() for n, p in tiny_vit.named_parameters()}
    with pytest.raises(UserError, match=message) as info:
        select(tiny_vit, make_batches(1, 2), "gd-fps", k=1, anchor=str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in tiny_vit.named_parameters())


def test_an_anchor_of_a_narrower_scope_names_it(tiny_vit, tmp_path):
    path = save_anchor(tiny_vit, pretraining_batches(), tmp_path / "attn.safetensors", scope="attention")
    with pytest.raises(UserError, match=r"no statistic for 'patch_embed.proj.weight' .*scope 'attention'") as info:
        select(tiny_vit, make_batches(1, 2), "gd-fps", k=1, anchor=str(path))
    assert "\n" not in str(info.value)
    select(tiny_vit, make_batches(1, 2), "gd-fps", k=1, anchor=str(path), scope="attention")  # that one works


@pytest.mark.parametrize("options,message", [
    ({"eps": 0}, "eps must be a finite number > 0"), ({"eps": -1e-3}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"), ({"eps": True}, "eps must be"), ({"eps": "small"}, "eps must be"),
    ({"growth": "log"}, "growth must be one of ratio, change, not 'log'"),
])
def test_bad_options_fail_in_one_line(options, message):
    with pytest.raises(UserError, match=message) as info:
        create("gd-fps", **options)
    assert "\n" not in str(info.value)


def test_save_anchor_failures_leave_nothing_behind(tiny_vit, tmp_path):
    with pytest.raises(UserError, match="directory .* does not exist") as info:
        save_anchor(tiny_vit, pretraining_batches(), tmp_path / "no" / "a.safetensors")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="got no batches"):
        save_anchor(tiny_vit, [], tmp_path / "a.safetensors")
    with pytest.raises(UserError, match="a batch must be an image tensor"):
        save_anchor(tiny_vit, [make_batches(1, 2)[0], "not a tensor"], tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []  # no file, no partial file


# ----------------------------------------------------------------------------- memory

def test_anchor_costs_one_statistic_at_a_time_and_sim_predicts_it(tmp_path):
    """With an anchor: the cpu tracker and sim:cpu agree to the byte, and the peak is at most
    FPS's plus the largest anchor tensor (read one at a time, 4 bytes per input feature)."""
    from fps_profile.measure import phases
    from fps_profile.sim import Simulator

    from test_conformance import _tracked

    model = make_tiny_vit()
    path = str(save_anchor(model, pretraining_batches(), tmp_path / "a.safetensors"))
    images, labels = make_batches(1, 4)[0]
    peaks = {}
    for selector, options in (("fps", {}), ("gd-fps", {"anchor": path})):
        _, peaks[selector] = _tracked(model, (images, labels),
                                      lambda: select(model, [(images, labels)], selector, k=1, **options))
        fresh = make_tiny_vit()  # timm's initialisers cannot run under the sim's fake mode
        with Simulator("sim:cpu") as sim:
            fake = sim.module(fresh)
            batch = [(torch.empty(images.shape), torch.empty(labels.shape, dtype=torch.long))]
            run = phases.select_fn(fake, batch, selector, phases.BudgetSpec.parse("k=1"), options=options)
            assert sim.measure(run).peak_bytes == peaks[selector], selector
    largest = max(p[0].numel() for n, p in model.named_parameters() if n in RANKED)
    assert peaks["fps"] <= peaks["gd-fps"] <= peaks["fps"] + 4 * largest
