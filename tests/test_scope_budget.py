"""Scopes (which tensors are ranked / fully trainable / frozen) and budgets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fps_profile import GlobalFraction, PerRowTopK, Role, Scope, UserError, select
from fps_profile.selection.budget import make_budget
from fps_profile.selection.scope import assign_roles, get_scope

from conftest import make_tiny_vit

DEPTH = 2
RANKED_GPS = ["patch_embed.proj.weight"] + [
    f"blocks.{i}.{m}.weight" for i in range(DEPTH) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
]


def roles_of(model, scope) -> dict[str, Role]:
    return {n: r for n, (r, _, _) in assign_roles(model, scope).items()}


def expected_gps_roles(names) -> dict[str, Role]:
    """Written out by hand for the tiny ViT with LayerScale (init_values)."""
    frozen = {"cls_token", "pos_embed", "norm.weight", "norm.bias"} | {
        f"blocks.{i}.{n}.{a}" for i in range(DEPTH) for n in ("norm1", "norm2") for a in ("weight", "bias")
    }
    trainable = {"head.weight", "head.bias", "patch_embed.proj.bias"} | {
        f"blocks.{i}.{m}" for i in range(DEPTH)
        for m in ("attn.qkv.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias", "ls1.gamma", "ls2.gamma")
    }
    out = {}
    for n in names:
        out[n] = Role.FROZEN if n in frozen else Role.TRAINABLE if n in trainable else Role.RANKED
    assert set(out) == frozen | trainable | set(RANKED_GPS)
    return out


# ----------------------------------------------------------------------------- scopes

def test_gps_scope_roles_on_vit_with_layerscale():
    model = make_tiny_vit(init_values=1e-5)
    names = [n for n, _ in model.named_parameters()]
    assert "blocks.0.ls1.gamma" in names
    assert roles_of(model, "gps") == expected_gps_roles(names)


@pytest.mark.parametrize("k", [1, 4])
def test_gps_scope_mask_fixed_parts_and_row_counts(k):
    model = make_tiny_vit(init_values=1e-5)
    mask = select(model, None, "magnitude", k=k)
    roles = expected_gps_roles(list(mask))
    params = dict(model.named_parameters())
    for n, role in roles.items():
        m = mask[n]
        assert m.dtype == torch.bool and m.shape == params[n].shape, n
        if role is Role.FROZEN:
            assert not m.any(), n  # incl. norm biases, pos_embed, cls_token
        elif role is Role.TRAINABLE:
            assert m.all(), n  # head, every other bias, LayerScale gamma
        else:
            rows = m.reshape(m.shape[0], -1)
            assert (rows.sum(1) == k).all(), n
    # the 4-D patch-embed kernel is ranked per output row over in*kh*kw (not per 2-D slice)
    pe = mask["patch_embed.proj.weight"]
    assert pe.shape == (32, 3, 8, 8)
    assert int(pe.sum()) == 32 * k
    # GPS budget arithmetic: k per output row of every ranked tensor + every trainable entry
    expected = sum(params[n].shape[0] * k for n in RANKED_GPS) + sum(
        params[n].numel() for n, r in roles.items() if r is Role.TRAINABLE)
    stats = mask.stats()
    assert stats.trainable == expected
    assert stats.total == sum(p.numel() for p in model.parameters())
    assert mask.meta["scope"] == "gps" and mask.meta["budget"] == f"per-row top-{k}"


def test_all_weights_scope(tiny_vit):
    roles = roles_of(tiny_vit, "all-weights")
    ranked = {n for n, r in roles.items() if r is Role.RANKED}
    assert ranked == set(RANKED_GPS) | {"head.weight"}
    assert not any(r is Role.TRAINABLE for r in roles.values())
    mask = select(tiny_vit, None, "magnitude", k=1, scope="all-weights")
    for n, m in mask.items():
        if n in ranked:
            assert (m.reshape(m.shape[0], -1).sum(1) == 1).all(), n
        else:
            assert not m.any(), n  # biases (head.bias too), norms, pos_embed, cls_token frozen


@pytest.mark.parametrize("scope, ranked_part", [("attention", ("attn.qkv", "attn.proj")), ("mlp", ("mlp.fc1",
                                                                                                   "mlp.fc2"))])
def test_attention_and_mlp_scopes(tiny_vit, scope, ranked_part):
    roles = roles_of(tiny_vit, scope)
    expected_ranked = {f"blocks.{i}.{m}.weight" for i in range(DEPTH) for m in ranked_part}
    assert {n for n, r in roles.items() if r is Role.RANKED} == expected_ranked
    assert {n for n, r in roles.items() if r is Role.TRAINABLE} == {"head.weight", "head.bias"}
    mask = select(tiny_vit, None, "magnitude", k=2, scope=scope)
    for n, m in mask.items():
        if n in expected_ranked:
            assert (m.reshape(m.shape[0], -1).sum(1) == 2).all(), n
        elif n.startswith("head."):
            assert m.all(), n
        else:
            assert not m.any(), n  # e.g. the other block part, all biases, patch_embed
    assert mask.meta["scope"] == scope


def test_custom_scope_object(tiny_vit):
    scope = Scope("fc2-only", trainable=(), rank_pattern=r"mlp\.fc2$|mlp\.fc2\.")
    roles = roles_of(tiny_vit, scope)
    assert {n for n, r in roles.items() if r is Role.RANKED} == {f"blocks.{i}.mlp.fc2.weight" for i in range(DEPTH)}
    assert get_scope(scope) is scope
    mask = select(tiny_vit, None, "magnitude", k=1, scope=scope)
    assert mask.stats().trainable == 2 * 32
    assert mask.meta["scope"] == "fc2-only"


def test_unknown_scope_suggests():
    with pytest.raises(UserError, match=r"unknown scope 'atention'; did you mean 'attention'"):
        get_scope("atention")


def test_roles_of_a_plain_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Linear(4, 2))
    assert roles_of(model, "gps") == {
        "0.weight": Role.RANKED, "0.bias": Role.TRAINABLE,
        "1.weight": Role.FROZEN, "1.bias": Role.FROZEN,  # a LayerNorm is frozen by type, whatever its name
        "2.weight": Role.RANKED, "2.bias": Role.TRAINABLE,
    }
    # GPS's name rules alone let the bias of a LayerNorm not named "norm" through
    names_only = Scope("gps-names", names_only=True)
    assert roles_of(model, names_only)["1.bias"] is Role.TRAINABLE


# ----------------------------------------------------------------------------- per-row top-K

def test_per_row_topk_by_hand():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(5, 7, generator=gen)
    mask = PerRowTopK(3).row_mask("w", scores)
    for r in range(5):
        top = set(torch.argsort(scores[r], descending=True)[:3].tolist())
        assert set(mask[r].nonzero().squeeze(1).tolist()) == top
    kernel = torch.rand(4, 2, 3, 3, generator=gen)
    km = PerRowTopK(2).row_mask("conv", kernel)
    assert km.shape == kernel.shape
    flat = kernel.reshape(4, -1)
    for r in range(4):
        top = set(torch.argsort(flat[r], descending=True)[:2].tolist())
        assert set(km.reshape(4, -1)[r].nonzero().squeeze(1).tolist()) == top
    # a full row (k = row length) keeps everything
    assert PerRowTopK(7).row_mask("w", scores).all()


@pytest.mark.parametrize("k", [0, -1, True, 1.5, "2", None])
def test_bad_k(k):
    with pytest.raises(UserError, match="k must be an integer >= 1"):
        PerRowTopK(k)


def test_bad_k_through_select(tiny_vit):
    for k in (0, -3):
        with pytest.raises(UserError, match="k must be an integer >= 1"):
            select(tiny_vit, None, "magnitude", k=k)
    # qkv/proj/fc1 rows have 32 entries (embed_dim); patch embed 192, fc2 128
    with pytest.raises(UserError, match=r"k=33 is larger than a row of 'blocks\.0\.attn\.qkv\.weight' \(32 entries\)"):
        select(tiny_vit, None, "magnitude", k=33)
    assert select(tiny_vit, None, "magnitude", k=32).stats().trainable > 0


def test_k_too_large_for_a_gradient_selector_leaves_model_clean(tiny_vit, batches):
    with pytest.raises(UserError, match="larger than a row"):
        select(tiny_vit, batches, "gps", k=1000)
    assert all(p.grad is None for p in tiny_vit.parameters())


# ----------------------------------------------------------------------------- global fraction

def test_global_fraction_exact_count_and_top_entries():
    gen = torch.Generator().manual_seed(1)
    scored = [("a", torch.rand(6, 5, generator=gen)), ("b", torch.rand(3, 2, 2, generator=gen) + 0.5),
              ("c", torch.rand(11, generator=gen))]
    n_total = sum(s.numel() for _, s in scored)  # 30 + 12 + 11 = 53
    allscores = torch.cat([s.reshape(-1) for _, s in scored])
    for fraction in (0.1, 0.25, 0.5, 0.77, 1.0):
        masks = dict(GlobalFraction(fraction).masks(iter(scored)))
        assert list(masks) == ["a", "b", "c"]
        n = max(1, round(fraction * n_total))
        assert sum(int(m.sum()) for m in masks.values()) == n
        kept = torch.cat([masks[name].reshape(-1) for name, _ in scored])
        expected = torch.zeros(n_total, dtype=torch.bool)
        expected[torch.argsort(allscores, descending=True)[:n]] = True
        assert torch.equal(kept, expected), fraction
        for name, s in scored:
            assert masks[name].shape == s.shape and masks[name].dtype == torch.bool


def test_global_fraction_compares_across_tensors():
    scored = [("low", torch.full((4, 4), 0.1) + torch.arange(16.).view(4, 4) * 1e-3),
              ("high", torch.full((2, 4), 5.0) + torch.arange(8.).view(2, 4))]
    masks = dict(GlobalFraction(8 / 24).masks(iter(scored)))
    assert masks["high"].all() and not masks["low"].any()


def test_global_fraction_keeps_at_least_one():
    scored = [("w", torch.arange(20.).view(4, 5))]
    masks = dict(GlobalFraction(1e-9).masks(iter(scored)))
    assert int(masks["w"].sum()) == 1 and bool(masks["w"][3, 4])


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.0000001, 1.5, float("nan"), float("inf"), "abc", None])
def test_bad_fraction(fraction):
    with pytest.raises(UserError, match="fraction must be"):
        GlobalFraction(fraction)


def test_global_fraction_through_select(tiny_vit):
    params = dict(tiny_vit.named_parameters())
    n_ranked = sum(params[n].numel() for n in RANKED_GPS)
    for fraction in (0.01, 0.1, 1.0):
        mask = select(tiny_vit, None, "magnitude", fraction=fraction)
        got = sum(int(mask[n].sum()) for n in RANKED_GPS)
        assert got == max(1, round(fraction * n_ranked))
        # exactly the largest |w| over all ranked tensors concatenated
        scores = torch.cat([params[n].detach().abs().reshape(-1) for n in RANKED_GPS])
        threshold = torch.sort(scores, descending=True).values[got - 1]
        for n in RANKED_GPS:
            s = params[n].detach().abs()
            assert torch.equal(mask[n], s >= threshold), n
        assert mask.meta["budget"] == f"global top-{fraction:g}"
    assert all(mask[n].all() for n in RANKED_GPS)  # fraction 1: everything ranked is trainable


def test_budget_needs_exactly_one_of_k_and_fraction(tiny_vit):
    for kw in ({}, {"k": 1, "fraction": 0.1}):
        with pytest.raises(UserError, match="give exactly one of k"):
            make_budget(**kw)
        with pytest.raises(UserError, match="give exactly one of k"):
            select(tiny_vit, None, "magnitude", **kw)
    assert isinstance(make_budget(k=2), PerRowTopK) and make_budget(k=2).k == 2
    assert isinstance(make_budget(fraction=0.5), GlobalFraction) and math.isclose(make_budget(fraction=0.5).fraction,
                                                                                  0.5)


def test_bad_fraction_through_select(tiny_vit):
    for fraction in (0.0, 1.2, -1):
        with pytest.raises(UserError, match=r"fraction must be in \(0, 1\]"):
            select(tiny_vit, None, "magnitude", fraction=fraction)


def test_global_fraction_streams_without_all_scores():
    """The documented peak: the current tensor's scores plus <= 40 bytes per kept entry."""
    from fps_profile.trackers import LiveTensorBytes

    size, count, fraction = 1 << 18, 8, 0.01
    gen = torch.Generator().manual_seed(0)
    made = [torch.rand(size // 256, 256, generator=gen) for _ in range(count)]

    def scored():  # fresh scores per tensor, as a selector makes them
        for i, s in enumerate(made):
            yield f"t{i}", s.clone()

    budget = GlobalFraction(fraction)
    with LiveTensorBytes("cpu") as live:
        base = live.current
        entries = dict(budget.entries(scored(), total=size * count))
    n = budget.keep(size * count)
    assert live.peak - base <= 4 * size + 40 * n  # 1 MiB + 0.8 MiB here; all scores would be 8 MiB
    # the same entries as the one-shot global top-n over every score
    everything = torch.cat([s.reshape(-1) for s in made])
    expected = torch.zeros(everything.numel(), dtype=torch.bool)
    expected[everything.topk(n).indices] = True
    assert torch.equal(torch.cat([entries[f"t{i}"].dense().reshape(-1) for i in range(count)]), expected)
