"""Every built-in selector against an independent reference computed by hand.

The references below use plain forward hooks, ``F.unfold`` and explicit loss
formulas in float64; they share no code with ``fps_profile.selection.selectors``.

Masks are compared entry by entry with :func:`numerics.mask_mismatches`: every entry must
agree with the reference's top-K (or global top fraction), except entries whose
reference score lies within a tie band (relative to the tensor's largest score) of
the selection boundary. The bands are derived in ``tests/numerics.py`` and below:
the forward selectors' float32 statistics are sums of same-sign terms, bounded by
``sum_rtol``; the gradient selectors run on float64 copies of the model, where
rounding sits far below any difference the tests look for. Tests of each
reference's power check that plausible wrong variants (batch means, sum instead of
mean, |grad| per batch, CE instead of SupCon, no flipped view) are rejected by the
same comparison.
"""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fps_profile
from fps_profile import UserError, select
from fps_profile.selection.selectors import SELECTORS, create, list_selectors

from conftest import make_batches
from numerics import assert_mask_matches, deep_atol, mask_mismatches, ref_global_masks, ref_topk_mask, sum_rtol

DEPTH = 2
RANKED = ["patch_embed.proj.weight"] + [
    f"blocks.{i}.{m}.weight" for i in range(DEPTH) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
]


# ----------------------------------------------------------------------------- references



def module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0])


def ref_input_stats(model: nn.Module, batches, names=RANKED):
    """Per target: (sum |x_j|, sum x_j^2, number of tokens), float64, by plain hooks.

    Linear: every leading position (sample x token) is one token. Conv2d: the
    input is unfolded into patches (F.unfold), one token per patch position,
    features ordered (channel, ky, kx) as in ``weight.reshape(out, -1)``.
    """
    model = copy.deepcopy(model).eval()
    acc: dict[str, list] = {}

    def hook_for(name):
        def hook(mod, args):
            x = args[0].double()
            if isinstance(mod, nn.Conv2d):
                cols = F.unfold(x, kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding)
                tokens = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            else:
                tokens = x.reshape(-1, x.shape[-1])
            s1, s2, n = tokens.abs().sum(0), tokens.pow(2).sum(0), tokens.shape[0]
            if name in acc:
                acc[name][0] += s1
                acc[name][1] += s2
                acc[name][2] += n
            else:
                acc[name] = [s1, s2, n]
        return hook

    handles = [module_of(model, n).register_forward_pre_hook(hook_for(n)) for n in names]
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    for h in handles:
        h.remove()
    return acc


def ref_fps_scores(model, batches, names=RANKED, pool="mean"):
    stats = ref_input_stats(model, batches, names)
    out = {}
    for n in names:
        w = dict(model.named_parameters())[n].detach().double()
        s1, _, count = stats[n]
        act = s1 / count if pool == "mean" else s1
        out[n] = (w.abs().reshape(w.shape[0], -1) * act).view(w.shape)
    return out


def ref_wanda_scores(model, batches, names=RANKED):
    stats = ref_input_stats(model, batches, names)
    out = {}
    for n in names:
        w = dict(model.named_parameters())[n].detach().double()
        out[n] = (w.abs().reshape(w.shape[0], -1) * stats[n][1].sqrt()).view(w.shape)
    return out


def ref_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al. (2020) eq. 2 (L_out), averaged over anchors, written anchor by anchor.

    z: [N, d] L2-normalised features of every view of every image; labels: [N].
    """
    n = z.shape[0]
    sim = z @ z.T / temperature
    total = z.new_zeros(())
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        log_denominator = torch.logsumexp(sim[i, others], dim=0)
        total = total + (-(sim[i, positives] - log_denominator).sum() / len(positives))
    return total / n


def ref_gradients(model, batches, loss="supcon", views=2, temperature=0.07, first_only=False):
    """Signed gradients of every parameter accumulated over batches, in train mode, float64."""
    model = copy.deepcopy(model).double().train()
    batches = [(images.double(), labels) for images, labels in batches]
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for i, (images, labels) in enumerate(batches):
        if first_only and i == 1:
            break
        if loss == "ce":
            assert views == 1
            L = F.cross_entropy(model(images), labels)
        else:
            assert views == 2
            x = torch.cat([images, images.flip(-1)], dim=0)  # view 2 = horizontal flip
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            z = F.normalize(feats, dim=1)
            L = ref_supcon(z, torch.cat([labels, labels]), temperature)
        L.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# Tie bands, relative to a tensor's largest score (tests/numerics.py).
# The largest selection data here: 3 batches x 6 images x (16 patches + the class token).
MAX_TOKENS = 3 * 6 * 17
# Forward selectors: a weight's float32 statistic sums at most MAX_TOKENS same-sign terms, is divided
# by the count and multiplied by |w| (Wanda: a square root instead of the division); the float64
# reference sums the same float32 activations, so only the selector's own rounding counts.
FORWARD_TOL = sum_rtol(MAX_TOKENS, torch.float32, extra_ops=3)
# Gradient selectors run on float64 copies of the model: the claim is the mathematics of their loss
# and its gradient. A 2-block ViT forward and backward is about 40 stages of sums of at most 612 terms
# (two views of MAX_TOKENS tokens); SupCon's exp(similarity / 0.07) scales relative error by up to
# 1 / 0.07, and a factor 10 allows for cancellation among a gradient's terms. That is about 8e-10 of
# the largest score, while every wrong variant below moves scores by more than 1e-3 of it.
GRAD_TOL = deep_atol(1.0, 2 * MAX_TOKENS, depth=40) / 0.07 * 10


def as_float64(model, batches):
    """A float64 copy of ``model`` and ``batches`` (gradient selectors are compared in float64)."""
    return copy.deepcopy(model).double(), [(x.double(), y) for x, y in batches]


def k_of_rows(mask_t: torch.Tensor) -> torch.Tensor:
    return mask_t.reshape(mask_t.shape[0], -1).sum(1)


# ----------------------------------------------------------------------------- registry

def test_builtin_selectors_are_registered_with_their_needs():
    assert {"fps", "gps", "magnitude", "random", "wanda", "snip"} <= set(list_selectors())
    assert list_selectors("w*") == ["wanda"]
    needs = {n: (fps_profile.get_selector(n).needs_backward, fps_profile.get_selector(n).needs_data,
                 fps_profile.get_selector(n).needs_labels) for n in ("fps", "gps", "magnitude", "random", "wanda",
                                                                     "snip")}
    assert needs == {
        "fps": (False, True, False), "wanda": (False, True, False),
        "gps": (True, True, True), "snip": (True, True, True),
        "magnitude": (False, False, False), "random": (False, False, False),
    }


# ----------------------------------------------------------------------------- fps

def uneven_batches():
    """Uneven batch sizes: the mean is over all tokens of all samples, not of batch means."""
    return make_batches(2, 6, seed=1) + make_batches(1, 2, seed=2)


@pytest.mark.parametrize("k", [1, 3])
def test_fps_matches_hand_reference_per_row(tiny_vit, k):
    data = uneven_batches()
    mask = select(tiny_vit, data, "fps", k=k)
    assert_mask_matches(mask, ref_fps_scores(tiny_vit, data), k=k, tol=FORWARD_TOL)
    assert mask.meta["selector"] == "fps" and mask.meta["budget"] == f"per-row top-{k}"


def test_fps_reference_is_discriminating(tiny_vit):
    """A mean of batch means, or the sum over tokens, gives masks the comparison rejects."""
    data = uneven_batches()
    full = ref_fps_scores(tiny_vit, data)
    per_batch = [ref_fps_scores(tiny_vit, [b]) for b in data]
    mean_of_means = {n: sum(s[n] for s in per_batch) for n in RANKED}
    wrong = {n: ref_topk_mask(mean_of_means[n], 1) for n in RANKED}
    assert mask_mismatches(wrong, full, k=1, tol=FORWARD_TOL)
    summed = ref_fps_scores(tiny_vit, data, pool="sum")
    assert mask_mismatches(ref_global_masks(summed, 0.05), full, fraction=0.05, tol=FORWARD_TOL)
    magnitude = {n: ref_topk_mask(dict(tiny_vit.named_parameters())[n].detach().abs(), 1) for n in RANKED}
    assert mask_mismatches(magnitude, full, k=1, tol=FORWARD_TOL)


def test_fps_scores_equal_reference_values(tiny_vit, batches):
    from fps_profile.selection.scope import Role, assign_roles
    from fps_profile.selection.selectors import Target

    ref = ref_fps_scores(tiny_vit, batches)
    sel = create("fps")
    roles = assign_roles(tiny_vit, "gps")
    params = dict(tiny_vit.named_parameters())
    targets = [Target(n, params[n], m, a) for n, (r, m, a) in roles.items() if r is Role.RANKED]
    assert [t.name for t in targets] == RANKED
    sel.prepare(tiny_vit, batches, targets)
    for t in targets:
        s = sel.score(t)
        assert s.shape == t.param.shape and s.dtype == torch.float32
        torch.testing.assert_close(s.double(), ref[t.name], rtol=FORWARD_TOL, atol=0)  # same-sign sums
    sel.release()


def test_fps_global_fraction_matches_reference(tiny_vit):
    # across tensors the normalisation matters: mean over tokens, not the sum
    data = uneven_batches()
    mask = select(tiny_vit, data, "fps", fraction=0.05)
    assert_mask_matches(mask, ref_fps_scores(tiny_vit, data), fraction=0.05, tol=FORWARD_TOL)


def test_fps_accepts_image_only_batches(tiny_vit, batches):
    with_labels = select(tiny_vit, batches, "fps", k=2)
    images_only = select(tiny_vit, [b[0] for b in batches], "fps", k=2)
    generator = select(tiny_vit, (b for b in batches), "fps", k=2)
    for n in with_labels:
        assert torch.equal(with_labels[n], images_only[n])
        assert torch.equal(with_labels[n], generator[n])


def test_fps_forward_is_eval_no_grad_and_leaves_no_trace(tiny_vit, batches):
    seen = []

    def spy(module, args, output):
        seen.append((module.training, torch.is_grad_enabled(), output.requires_grad))

    tiny_vit.train()
    handle = tiny_vit.blocks[0].register_forward_hook(spy)
    try:
        select(tiny_vit, batches, "fps", k=1)
    finally:
        handle.remove()
    assert len(seen) == len(batches)
    assert all(s == (False, False, False) for s in seen)  # eval, no autograd graph
    assert tiny_vit.training  # mode restored
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert all(p.requires_grad for p in tiny_vit.parameters())


# ----------------------------------------------------------------------------- wanda

@pytest.mark.parametrize("budget", [{"k": 2}, {"fraction": 0.03}])
def test_wanda_matches_hand_reference(tiny_vit, budget):
    data = uneven_batches()
    scores = ref_wanda_scores(tiny_vit, data)
    assert_mask_matches(select(tiny_vit, data, "wanda", **budget), scores, tol=FORWARD_TOL, **budget)
    # the comparison tells the L2 norm from FPS's mean |x|
    assert mask_mismatches(select(tiny_vit, data, "fps", **budget), scores, tol=FORWARD_TOL, **budget)


# ----------------------------------------------------------------------------- magnitude, random

def test_magnitude_matches_reference_and_needs_no_data(tiny_vit):
    params = dict(tiny_vit.named_parameters())
    scores = {n: params[n].detach().abs() for n in RANKED}
    assert_mask_matches(select(tiny_vit, None, "magnitude", k=2), scores, k=2, tol=0.0)  # |w|: no arithmetic, exact
    assert_mask_matches(select(tiny_vit, None, "magnitude", fraction=0.1), scores, fraction=0.1, tol=0.0)


def test_random_is_seeded(tiny_vit):
    a = select(tiny_vit, None, "random", k=2, seed=3)
    b = select(tiny_vit, None, "random", k=2, seed=3)
    c = select(tiny_vit, None, "random", k=2, seed=4)
    d = select(tiny_vit, None, "random", k=2)
    e = select(tiny_vit, None, "random", k=2, seed=0)
    for n in a:
        assert torch.equal(a[n], b[n])
        assert torch.equal(d[n], e[n])  # default seed is 0
    assert any(not torch.equal(a[n], c[n]) for n in RANKED)
    for n in RANKED:
        assert (k_of_rows(a[n]) == 2).all()
    # and it does not follow the weights
    assert a.overlap(select(tiny_vit, None, "magnitude", k=2)).ranked < 0.5


def test_random_does_not_touch_global_rng(tiny_vit):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    select(tiny_vit, None, "random", k=1, seed=9)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- gps

def test_gps_default_matches_supcon_reference(tiny_vit, batches):
    model, batches = as_float64(tiny_vit, batches)
    grads = ref_gradients(model, batches, loss="supcon", views=2)
    mask = select(model, batches, "gps", k=2)
    assert_mask_matches(mask, {n: grads[n].abs() for n in RANKED}, k=2, tol=GRAD_TOL)
    assert mask.meta["selector"] == "gps"


def test_gps_scores_equal_reference_values(tiny_vit, batches):
    from fps_profile.selection.scope import Role, assign_roles
    from fps_profile.selection.selectors import Target

    model, batches = as_float64(tiny_vit, batches)
    grads = ref_gradients(model, batches)
    roles = assign_roles(model, "gps")
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], m, a) for n, (r, m, a) in roles.items() if r is Role.RANKED]
    sel = create("gps")
    sel.prepare(model, batches, targets)
    for t in targets:
        ref = grads[t.name].abs()
        torch.testing.assert_close(sel.score(t), ref, rtol=0, atol=GRAD_TOL * float(ref.max()))
    sel.release()


def test_gps_reference_is_discriminating(tiny_vit, batches):
    """|grad| per batch summed, CE instead of SupCon, or no flipped view: all rejected."""
    model, batches = as_float64(tiny_vit, batches)
    truth = {n: g.abs() for n, g in ref_gradients(model, batches).items() if n in RANKED}
    per_batch = [ref_gradients(model, [b]) for b in batches]
    abs_sum = {n: ref_topk_mask(sum(g[n].abs() for g in per_batch), 2) for n in RANKED}
    assert mask_mismatches(abs_sum, truth, k=2, tol=GRAD_TOL)
    ce = ref_gradients(model, batches, loss="ce", views=1)
    assert mask_mismatches({n: ref_topk_mask(ce[n].abs(), 2) for n in RANKED}, truth, k=2, tol=GRAD_TOL)
    same_view = select(model, batches, "gps", k=2, augment=lambda images, v: images)
    assert mask_mismatches(same_view, truth, k=2, tol=GRAD_TOL)


def test_gps_supcon_loss_equals_khosla_formula():
    from fps_profile.selection.selectors._gradients import supcon_loss

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 2, 8, generator=gen, dtype=torch.float64)  # [b, views, d]
    labels = torch.tensor([0, 1, 0, 2, 1])
    z = F.normalize(torch.cat([feats[:, 0], feats[:, 1]]), dim=1)
    both = torch.cat([labels, labels])
    torch.testing.assert_close(supcon_loss(feats, labels, 0.07), ref_supcon(z, both, 0.07))
    # GPS scales by temperature / base_temperature (base 0.07)
    torch.testing.assert_close(supcon_loss(feats, labels, 0.5), ref_supcon(z, both, 0.5) * 0.5 / 0.07)


def test_gps_ce_single_view_matches_reference(tiny_vit, batches):
    model, batches = as_float64(tiny_vit, batches)
    grads = ref_gradients(model, batches, loss="ce", views=1)
    mask = select(model, batches, "gps", k=1, loss="ce", views=1)
    assert_mask_matches(mask, {n: grads[n].abs() for n in RANKED}, k=1, tol=GRAD_TOL)


def test_gps_global_fraction_matches_reference(tiny_vit, batches):
    model, batches = as_float64(tiny_vit, batches)
    grads = ref_gradients(model, batches)
    mask = select(model, batches, "gps", fraction=0.02)
    assert_mask_matches(mask, {n: grads[n].abs() for n in RANKED}, fraction=0.02, tol=GRAD_TOL)


@pytest.mark.parametrize("training", [False, True])
def test_gps_leaves_model_as_found(tiny_vit, batches, training):
    clean_mask = select(copy.deepcopy(tiny_vit), batches, "gps", k=2)
    params = dict(tiny_vit.named_parameters())
    sentinel = {}
    for i, (n, p) in enumerate(params.items()):
        if i % 3 == 0:
            p.grad = torch.full_like(p, 7.0)  # stale gradient that must not leak into the scores
            sentinel[n] = p.grad
        if i % 2 == 0:
            p.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    tiny_vit.train(training)
    seen = []
    handle = tiny_vit.blocks[1].register_forward_hook(lambda m, a, o: seen.append((m.training, o.requires_grad)))
    try:
        mask = select(tiny_vit, batches, "gps", k=2)
    finally:
        handle.remove()
    assert seen and all(s == (True, True) for s in seen)  # train mode, with autograd, during the pass
    assert tiny_vit.training is training
    for n, p in params.items():
        assert p.requires_grad is flags[n], n
        if n in sentinel:
            assert p.grad is sentinel[n] and bool((p.grad == 7.0).all()), n
        else:
            assert p.grad is None, n
        assert torch.equal(p.detach(), before[n]), n
    for n in mask:  # same computation as on the clean copy: bit-identical
        assert torch.equal(mask[n], clean_mask[n]), n


def test_gps_option_validation():
    with pytest.raises(UserError, match="loss must be one of 'auto', 'supcon', 'ce', 'lm'"):
        create("gps", loss="mse")
    with pytest.raises(UserError, match="views must be >= 1"):
        create("gps", views=0)


# ----------------------------------------------------------------------------- snip

def snip_scores(model, grads):
    params = dict(model.named_parameters())
    return {n: (params[n].detach().double() * grads[n]).abs() for n in RANKED}


def test_snip_matches_reference_on_first_batch(tiny_vit, batches):
    model, batches = as_float64(tiny_vit, batches)
    scores = snip_scores(model, ref_gradients(model, batches, loss="ce", views=1, first_only=True))
    mask = select(model, batches, "snip", k=2)
    assert_mask_matches(mask, scores, k=2, tol=GRAD_TOL)
    # only the first batch counts: other later batches give the same mask (the same computation: exact)
    other_tail = [batches[0]] + [(x.double(), y) for x, y in make_batches(2, 6, seed=7)]
    tail_mask = select(model, other_tail, "snip", k=2)
    assert all(torch.equal(mask[n], tail_mask[n]) for n in mask)
    # the comparison rejects |grad| alone and the sum over every batch
    plain = ref_gradients(model, batches, loss="ce", views=1, first_only=True)
    assert mask_mismatches({n: ref_topk_mask(plain[n].abs(), 2) for n in RANKED}, scores, k=2, tol=GRAD_TOL)
    every = snip_scores(model, ref_gradients(model, batches, loss="ce", views=1))
    assert mask_mismatches({n: ref_topk_mask(every[n], 2) for n in RANKED}, scores, k=2, tol=GRAD_TOL)
    assert all(p.grad is None for p in model.parameters())


def test_snip_num_batches_accumulates(tiny_vit, batches):
    model, batches = as_float64(tiny_vit, batches)
    scores = snip_scores(model, ref_gradients(model, batches[:2], loss="ce", views=1))
    assert_mask_matches(select(model, batches, "snip", k=1, num_batches=2), scores, k=1, tol=GRAD_TOL)
    with pytest.raises(UserError, match="num_batches must be >= 1"):
        create("snip", num_batches=0)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("selector", ["fps", "wanda", "gps", "snip"])
def test_no_batches_is_a_clear_error(tiny_vit, selector):
    with pytest.raises(UserError, match="no batches"):
        select(tiny_vit, [], selector, k=1)
    with pytest.raises(UserError, match="no batches"):
        select(tiny_vit, iter([]), selector, k=1)
    with pytest.raises(UserError, match="needs batches"):
        select(tiny_vit, None, selector, k=1)


@pytest.mark.parametrize("selector", ["gps", "snip"])
def test_missing_labels_is_a_clear_error(tiny_vit, batches, selector):
    with pytest.raises(UserError, match=f"selector '{selector}' needs labels"):
        select(tiny_vit, [b[0] for b in batches], selector, k=1)
    with pytest.raises(UserError, match="needs labels"):
        select(tiny_vit, [(b[0],) for b in batches], selector, k=1)
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert not tiny_vit.training


def test_bad_batch_type_is_a_clear_error(tiny_vit):
    with pytest.raises(UserError, match="a batch must be an image tensor"):
        select(tiny_vit, ["not a tensor"], "fps", k=1)


def test_unknown_selector_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown selector 'fsp'; did you mean 'fps'") as info:
        select(nn.Linear(4, 4), None, "fsp", k=1)
    assert "\n" not in str(info.value)


def test_unknown_option_is_a_clear_error(tiny_vit):
    with pytest.raises(UserError, match=r"selector 'fps' has no option 'eps' \(it takes: no options\)"):
        select(tiny_vit, None, "fps", k=1, eps=1)
    with pytest.raises(UserError, match=r"selector 'random' has no option 'sed' \(it takes: seed=0\)"):
        select(tiny_vit, None, "random", k=1, sed=1)


def test_model_with_nothing_eligible(batches):
    model = nn.Sequential(nn.LayerNorm(8))
    with pytest.raises(UserError, match="has no parameter the 'gps' scope ranks"):
        select(model, None, "magnitude", k=1)
    with pytest.raises(UserError, match="'attention' scope"):
        select(nn.Sequential(nn.Linear(4, 4)), None, "magnitude", k=1, scope="attention")


def test_plain_module_without_timm_head_fails_clearly_for_supcon():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 0, 2]))]
    with pytest.raises(UserError, match="forward_features/forward_head"):
        select(model, data, "gps", k=1)
    mask = select(model, data, "gps", k=1, loss="ce", views=1)
    assert mask.stats().trainable == 3 + 3  # one per row of the weight, plus the bias


# ----------------------------------------------------------------------------- plugins

def test_third_party_selector_through_decorator(tiny_vit):
    @fps_profile.register_selector("smallest_magnitude")
    class Smallest(fps_profile.Selector):
        """Keeps the smallest |w| (a deliberately odd third-party selector)."""

        needs_data = False

        def __init__(self, *, power: float = 1.0) -> None:
            self.power = power

        def score(self, target):
            return -target.param.detach().abs().pow(self.power)

    try:
        assert "smallest_magnitude" in list_selectors()
        assert Smallest.name == "smallest_magnitude"
        mask = select(tiny_vit, None, "smallest_magnitude", k=1, power=2.0)
        params = dict(tiny_vit.named_parameters())
        assert_mask_matches(mask, {n: -params[n].detach().abs() for n in RANKED}, k=1, tol=0.0)
        with pytest.raises(UserError, match="has no option 'pow'"):
            select(tiny_vit, None, "smallest_magnitude", k=1, pow=2)
        with pytest.raises(ValueError, match="already registered"):
            fps_profile.register_selector("smallest_magnitude")(type("Other", (fps_profile.Selector,), {}))
    finally:
        SELECTORS.unregister("smallest_magnitude")
    assert "smallest_magnitude" not in list_selectors()
    with pytest.raises(UserError, match="unknown selector"):
        select(tiny_vit, None, "smallest_magnitude", k=1)


def test_entry_point_plugin_is_loaded_lazily(tiny_vit, monkeypatch):
    import sys
    import types

    plugin = types.ModuleType("fake_fps_plugin")

    class FirstColumn(fps_profile.Selector):
        """Always the first column."""

        needs_data = False

        def score(self, target):
            s = torch.zeros(target.param.shape[0], target.param[0].numel())
            s[:, 0] = 1.0
            return s.view(target.param.shape)

    plugin.FirstColumn = FirstColumn
    monkeypatch.setitem(sys.modules, "fake_fps_plugin", plugin)
    group = "fps_profile.selectors"
    eps = [importlib.metadata.EntryPoint("first_column", "fake_fps_plugin:FirstColumn", group),
           importlib.metadata.EntryPoint("broken", "no_such_module_xyz:Nope", group)]
    calls = []

    def fake_entry_points(**kw):
        calls.append(kw)
        return [ep for ep in eps if ep.group == kw.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(SELECTORS, "_lazy", None)
    try:
        assert {"first_column", "broken", "fps"} <= set(list_selectors())
        assert calls == [{"group": group}]
        mask = select(tiny_vit, None, "first_column", k=1)
        for n in RANKED:
            rows = mask[n].reshape(mask[n].shape[0], -1)
            assert rows[:, 0].all() and not rows[:, 1:].any()
        assert FirstColumn.name == "first_column"
        with pytest.raises(UserError, match=r"selector plugin 'broken' \(no_such_module_xyz:Nope\) failed to load"):
            select(tiny_vit, None, "broken", k=1)
    finally:
        SELECTORS.unregister("first_column")
