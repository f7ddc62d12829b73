"""Mask overlap on the ranked entries beside the whole tensors, Spearman of scores, and 'fps-profile overlap'
(issue 26, item 2)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import fps_profile
from fps_profile.cli import main
from fps_profile.selection.agreement import agreements, average_ranks, correlations, spearman
from fps_profile.selection.mask import Mask
from fps_profile.selection.scope import Role, assign_roles


def _bool(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_ranked_and_whole_parts_by_hand():
    a = Mask({"w": _bool(1, 1, 0, 0, 0, 0), "bias": _bool(1, 1, 1), "head": _bool(1, 1, 1, 1), "norm": _bool(0, 0)})
    b = Mask({"w": _bool(1, 0, 1, 0, 0, 0), "bias": _bool(1, 1, 1), "head": _bool(1, 1, 1, 1), "norm": _bool(0, 0)})
    ov = a.overlap(b)
    assert [t.name for t in ov.tensors if t.ranked] == ["w"]  # the one tensor trained in part
    assert ov.ranked == pytest.approx(1 / 3)  # w: {0, 1} and {0, 2}
    assert ov.whole == 1.0  # bias and head in both, 7 entries
    assert ov.all == pytest.approx((1 + 7) / (3 + 7))  # the old figure: the whole tensors pull it up
    r, w = ov.ranked_part, ov.whole_part
    assert (r.tensors, r.a, r.b, r.both, r.union) == (1, 2, 2, 1, 3)
    assert (w.tensors, w.a, w.b, w.both) == (3, 7, 7, 7)
    text = str(ov)
    assert "ranked entries (1 tensors): Jaccard 0.3333 (1 shared of 3 in either" in text
    assert "whole tensors (3 tensors, trained whole or frozen): Jaccard 1.0000" in text
    # the scope's roles, where given, decide: a ranked tensor both train whole counts as ranked
    ov = a.overlap(b, ranked={"w", "head"})
    assert ov.ranked == pytest.approx((1 + 4) / (3 + 4)) and ov.whole == 1.0
    assert a.overlap(dict(b)).to_dict() == a.overlap(b).to_dict()  # any mapping of bool tensors


def test_overlap_of_two_selectors_on_a_tiny_vit_against_dense_masks(tiny_vit, batches):
    roles = assign_roles(tiny_vit, "gps")
    ranked = {n for n, (r, _, _) in roles.items() if r is Role.RANKED}
    a = fps_profile.select(tiny_vit, batches, "fps", k=1)
    b = fps_profile.select(tiny_vit, None, "random", k=1, seed=5)
    ov = a.overlap(b, ranked)
    # by hand, from the dense bool masks
    both = sum(int((a[n] & b[n]).sum()) for n in ranked)
    either = sum(int((a[n] | b[n]).sum()) for n in ranked)
    whole = [n for n in a if n not in ranked]
    assert ov.ranked == both / either
    assert ov.whole == 1.0 and ov.whole_part.a == sum(int(a[n].sum()) for n in whole)
    for t in ov.tensors:
        assert t.both == int((a[t.name] & b[t.name]).sum()) and t.a == int(a[t.name].sum())
    # an index over every trainable entry mixes in the whole tensors, which every mask of the scope shares
    r, w = ov.ranked_part, ov.whole_part
    assert ov.all == (r.both + w.both) / (r.union + w.union) and ov.all > 10 * ov.ranked
    assert a.overlap(b).ranked == ov.ranked  # inferring the ranked tensors from the masks agrees here


def test_empty_and_mismatched_masks():
    none = Mask({"x": torch.zeros(4, dtype=torch.bool)})
    assert none.overlap(none).ranked == 1.0 and none.overlap(none).all == 1.0
    with pytest.raises(fps_profile.UserError, match="masks cover different parameters"):
        none.overlap({"z": torch.zeros(4, dtype=torch.bool)})
    with pytest.raises(fps_profile.UserError, match=r"masks disagree on the shape of 'x': \(4,\) vs \(2, 2\)"):
        none.overlap({"x": torch.zeros(2, 2, dtype=torch.bool)})


def _ranks_by_hand(values):
    """1-based ranks, ties averaged, in plain Python."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson_by_hand(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return num / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_spearman_against_a_hand_computation_with_ties():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(3, 40)
        x = [rng.choice([0.0, 0.5, 1.0, 2.0, rng.random()]) for _ in range(n)]  # many ties
        y = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(n)]
        assert average_ranks(torch.tensor(x)).tolist() == _ranks_by_hand(x)  # halves: exact in float64
        if len(set(x)) > 1 and len(set(y)) > 1:
            # float64 sums of at most 40 products of ranks <= 40: rounding far below 1e-12
            assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(
                _pearson_by_hand(_ranks_by_hand(x), _ranks_by_hand(y)), abs=1e-12)
    assert spearman(torch.ones(5), torch.arange(5.0)) is None  # a constant ranks nothing
    # no ties: the textbook formula 1 - 6 sum d^2 / (n (n^2 - 1))
    x, y = torch.randperm(50, generator=torch.Generator().manual_seed(1)), torch.arange(50)
    d2 = float(((x - y).double() ** 2).sum())
    assert spearman(x.float(), y.float()) == pytest.approx(1 - 6 * d2 / (50 * (50**2 - 1)), abs=1e-12)
    with pytest.raises(fps_profile.UserError, match="NaN"):
        average_ranks(torch.tensor([1.0, float("nan")]))


def test_correlation_total_is_the_size_weighted_mean():
    g = torch.Generator().manual_seed(0)
    s1 = {"a": torch.randn(6, 4, generator=g), "b": torch.randn(10, generator=g), "c": torch.ones(3)}
    s2 = {"a": s1["a"] * 2 + 0.1 * torch.randn(6, 4, generator=g), "b": -s1["b"], "c": torch.arange(3.0)}
    corr = correlations({"x": s1, "y": s2})[("x", "y")]
    assert corr.tensors["b"] == pytest.approx(-1.0, abs=1e-12) and corr.tensors["c"] is None
    assert corr.total == pytest.approx((corr.tensors["a"] * 24 - 10) / 34, abs=1e-12)


def test_kept_scores_are_the_selectors_and_leave_the_mask_unchanged(tiny_vit, batches):
    kept: dict = {}
    mask = fps_profile.select(tiny_vit, None, "magnitude", k=2, keep_scores=kept)
    plain = fps_profile.select(tiny_vit, None, "magnitude", k=2)
    assert all(torch.equal(mask[n], plain[n]) for n in mask)
    ranked = {n for n, (r, _, _) in assign_roles(tiny_vit, "gps").items() if r is Role.RANKED}
    params = dict(tiny_vit.named_parameters())
    assert set(kept) == ranked and all(torch.equal(kept[n], params[n].detach().abs()) for n in ranked)
    # pairs over three masks: every pair counts the same ranked tensors, scores correlated where kept
    other: dict = {}
    masks = {"magnitude": mask, "random": fps_profile.select(tiny_vit, None, "random", k=2, keep_scores=other),
             "file": plain}
    pairs = agreements(masks, {"magnitude": kept, "random": other})
    assert [(p.a, p.b) for p in pairs] == [("magnitude", "random"), ("magnitude", "file"), ("random", "file")]
    assert pairs[0].correlation is not None and pairs[1].correlation is None
    assert pairs[1].overlap.ranked == 1.0
    n = "blocks.0.mlp.fc1.weight"
    assert pairs[0].correlation.tensors[n] == pytest.approx(
        _pearson_by_hand(_ranks_by_hand(kept[n].flatten().tolist()), _ranks_by_hand(other[n].flatten().tolist())),
        abs=1e-9)


# -- the command ----------------------------------------------------------------------------------------------------

def test_cli_compares_mask_files(tmp_path, capsys, tiny_vit, batches):
    a = fps_profile.select(tiny_vit, batches, "fps", k=1)
    b = fps_profile.select(tiny_vit, None, "magnitude", k=1)
    c = fps_profile.select(tiny_vit, None, "random", k=1)
    paths = [str(m.save(tmp_path / f"{i}.safetensors")) for i, m in enumerate((a, b, c))]
    assert main(["overlap", *paths, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(p["a"], p["b"]) for p in out["pairs"]] == [(paths[0], paths[1]), (paths[0], paths[2]),
                                                        (paths[1], paths[2])]
    first = out["pairs"][0]
    assert first["ranked"]["jaccard"] == a.overlap(b).ranked and first["whole"]["jaccard"] == 1.0
    assert first["spearman"] is None and all(t["spearman"] is None for t in first["tensors"])
    assert main(["overlap", *paths[:2], "--per-tensor"]) == 0
    text = capsys.readouterr().out
    assert "ranked Jaccard" in text and "blocks.0.mlp.fc1.weight" in text and "files do not record the scope" in text


@pytest.mark.parametrize("argv, message", [
    (["one.safetensors"], "give two or more mask files"),
    (["a", "b", "--selector", "fps,gps"], "not both"),
    (["--selector", "fps"], "two or more different selectors"),
    (["--selector", "fps,fsp"], "did you mean 'fps'"),
    (["--selector", "fps,gps", "-o", "wanda:x=1"], "not among --selector"),
])
def test_cli_bad_input_is_one_line(capsys, argv, message):
    assert main(["overlap", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_runs_selectors_on_one_seeded_model(capsys):
    argv = ["overlap", "--selector", "magnitude,random", "-o", "random:seed=3", "--model", "test_vit", "--k", "2",
            "--seed", "7", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (pair,) = out["pairs"]
    assert (pair["a"], pair["b"]) == ("magnitude", "random[seed=3]")
    # the same model from the same seed: the masks and scores recomputed here give the same figures
    from fps_profile.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = create_model("test_vit")
    s1, s2 = {}, {}
    m1 = fps_profile.select(model, None, "magnitude", k=2, keep_scores=s1)
    m2 = fps_profile.select(model, None, "random", k=2, seed=3, keep_scores=s2)
    ranked = {n for n, (r, _, _) in assign_roles(model, "gps").items() if r is Role.RANKED}
    assert pair["ranked"]["jaccard"] == m1.overlap(m2, ranked).ranked
    by_name = {t["name"]: t for t in pair["tensors"]}
    assert {n for n, t in by_name.items() if t["ranked"]} == ranked
    for n in ranked:
        assert by_name[n]["spearman"] == pytest.approx(spearman(s1[n], s2[n]), abs=1e-12)
    sizes = {n: s1[n].numel() for n in ranked}
    assert pair["spearman"] == pytest.approx(sum(by_name[n]["spearman"] * sizes[n] for n in ranked)
                                             / sum(sizes.values()), abs=1e-12)
    assert main(argv) == 0 and json.loads(capsys.readouterr().out) == out  # reproducible
