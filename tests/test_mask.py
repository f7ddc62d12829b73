"""Mask: statistics, safetensors round trip, clear errors on bad files, check(), overlap."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fps_profile import Mask, UserError, select


def small_mask() -> Mask:
    a = torch.tensor([[True, False, False], [False, True, True]])
    b = torch.zeros(4, dtype=torch.bool)
    c = torch.ones(2, 1, 2, dtype=torch.bool)
    return Mask({"a": a, "b": b, "c": c}, {"selector": "hand", "k": 2})


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_stats_counts_by_hand():
    s = small_mask().stats()
    assert (s.total, s.trainable) == (6 + 4 + 4, 3 + 0 + 4)
    assert s.percent == pytest.approx(100 * 7 / 14)
    assert [(t.name, t.shape, t.numel, t.trainable) for t in s.tensors] == [
        ("a", (2, 3), 6, 3), ("b", (4,), 4, 0), ("c", (2, 1, 2), 4, 4)]
    assert [t.percent for t in s.tensors] == pytest.approx([50.0, 0.0, 100.0])
    d = s.to_dict()
    assert d["total"] == 14 and d["trainable"] == 7 and d["tensors"][0]["percent"] == pytest.approx(50.0)
    text = s.format()
    assert "trainable 7 of 14 parameters (50.000%)" in text.splitlines()[-1]
    assert len(text.splitlines()) == 1 + 3 + 1
    assert s.format(per_tensor=False) == "trainable 7 of 14 parameters (50.000%)"
    assert Mask({}).stats().percent == 0.0


def test_mapping_interface_and_meta_strings():
    m = small_mask()
    assert list(m) == ["a", "b", "c"] and len(m) == 3 and "a" in m
    assert m.meta == {"selector": "hand", "k": "2"}  # metadata is stringified
    assert m.nbytes == 3 * 4  # int32 positions of a's 3 entries; b (none) and c (all) store nothing
    assert repr(m) == "Mask(3 tensors, 7/14 trainable)"


def test_non_bool_entry_rejected():
    with pytest.raises(UserError, match="mask entry 'x' is not a bool tensor"):
        Mask({"x": torch.ones(3)})
    with pytest.raises(UserError, match="not a bool tensor"):
        Mask({"x": [True, False]})


def test_save_load_round_trip(tmp_path, tiny_vit, batches):
    mask = select(tiny_vit, batches, "fps", k=2)
    path = mask.save(tmp_path / "m.safetensors")
    assert path == tmp_path / "m.safetensors" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no partial file left behind
    loaded = Mask.load(path)
    assert list(loaded) == list(mask)
    for n in mask:
        assert loaded[n].dtype == torch.bool and torch.equal(loaded[n], mask[n]), n
    assert loaded.meta == mask.meta
    assert loaded.stats() == mask.stats()
    loaded.check(tiny_vit)
    # saving over an existing file replaces it
    Mask({"a": torch.ones(2, dtype=torch.bool)}, {"x": "y"}).save(path)
    assert list(Mask.load(str(path))) == ["a"] and Mask.load(path).meta == {"x": "y"}


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist") as info:
        Mask.load(tmp_path / "nope.safetensors")
    one_line(info)


@pytest.mark.parametrize("content", [b"", b"this is not a safetensors file at all" * 3, b"\xff" * 64])
def test_load_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a readable mask file") as info:
        Mask.load(path)
    one_line(info)


def test_load_truncated_file(tmp_path):
    path = small_mask().save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3])
    with pytest.raises(UserError, match="is not a readable mask file") as info:
        Mask.load(path)
    one_line(info)


def test_load_foreign_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.randn(2, 2)}, str(path))
    with pytest.raises(UserError, match="is a safetensors file but not an fps-profile mask") as info:
        Mask.load(path)
    one_line(info)
    save_file({"w": torch.randn(2, 2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not an fps-profile mask"):
        Mask.load(path)


@pytest.mark.parametrize("meta", ["{not json", "[1, 2]", '"a string"'])
def test_load_corrupt_metadata(tmp_path, meta):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2, dtype=torch.bool)}, str(path),
              metadata={"format": "fps-profile-mask", "version": "1", "meta": meta})
    with pytest.raises(UserError, match="corrupt mask metadata") as info:
        Mask.load(path)
    one_line(info)


def test_load_mask_file_with_non_bool_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2)}, str(path), metadata={"format": "fps-profile-mask", "version": "1", "meta": "{}"})
    with pytest.raises(UserError, match="not a bool tensor"):
        Mask.load(path)


def test_save_to_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot write mask") as info:
        small_mask().save(tmp_path / "no" / "such" / "dir" / "m.safetensors")
    one_line(info)
    assert not (tmp_path / "no").exists()


def test_check_against_model():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    good = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    Mask(good).check(model)

    missing = dict(good)
    del missing["1.bias"]
    with pytest.raises(UserError, match=r"mask does not match the model: it lacks '1\.bias'$") as info:
        Mask(missing).check(model)
    one_line(info)

    extra = dict(good, **{"2.weight": torch.ones(1, dtype=torch.bool), "2.bias": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(UserError, match=r"it has '2\.weight', which the model lacks \(and 1 more\)"):
        Mask(extra).check(model)

    shape = dict(good, **{"0.weight": torch.ones(3, 2, dtype=torch.bool)})
    with pytest.raises(UserError, match=r"'0\.weight' is \(3, 2\) in the mask, \(2, 3\) in the model"):
        Mask(shape).check(model)


def test_overlap_jaccard_by_hand():
    a = Mask({"x": torch.tensor([True, True, False, False]), "y": torch.tensor([[True, False], [True, False]])})
    b = Mask({"x": torch.tensor([True, False, True, False]), "y": torch.tensor([[True, True], [False, False]])})
    # x: inter 1, union 3; y: inter 1, union 3 -> 2 / 6 (both partly trained: ranked)
    assert a.overlap(b).ranked == pytest.approx(2 / 6)
    assert b.overlap(a).ranked == pytest.approx(2 / 6)
    assert a.overlap(a).ranked == 1.0
    assert a.overlap(dict(b)).ranked == pytest.approx(2 / 6)  # any mapping of tensors
    none = {"x": torch.zeros(4, dtype=torch.bool), "y": torch.zeros(2, 2, dtype=torch.bool)}
    assert Mask(none).overlap(none).ranked == 1.0  # two empty masks agree
    assert a.overlap(none).ranked == 0.0


def test_overlap_mismatch_errors():
    a = Mask({"x": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(UserError, match="masks cover different parameters"):
        a.overlap({"z": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(UserError, match=r"masks disagree on the shape of 'x': \(4,\) vs \(2, 2\)"):
        a.overlap({"x": torch.ones(2, 2, dtype=torch.bool)})


def test_load_keeps_model_order_and_reads_files_without_order(tmp_path):
    names = ["z.weight", "a.bias", "m.weight"]  # not alphabetical, as in a model
    mask = Mask({n: torch.ones(2, dtype=torch.bool) for n in names})
    assert list(Mask.load(mask.save(tmp_path / "m.safetensors"))) == names
    # a file without the "order" entry (or with a stale one) still loads, in file order
    for extra in ({}, {"order": json.dumps(["z.weight"])}):
        path = tmp_path / "old.safetensors"
        save_file({n: torch.ones(2, dtype=torch.bool) for n in names}, str(path),
                  metadata={"format": "fps-profile-mask", "version": "1", "meta": "{}", **extra})
        assert sorted(Mask.load(path)) == sorted(names)


def test_save_unwritable_target_is_a_user_error(tmp_path):
    (tmp_path / "m.safetensors").mkdir()  # a directory where the file should go
    with pytest.raises(UserError, match="cannot write mask") as info:
        small_mask().save(tmp_path / "m.safetensors")
    one_line(info)


# ----------------------------------------------------------------------------- compact form and file versions

def _v1_file(path, mask: Mask) -> None:
    """A mask file as fps-profile wrote it before compact masks: one bool tensor per parameter."""
    save_file({n: mask[n].contiguous() for n in mask}, str(path),
              metadata={"format": "fps-profile-mask", "version": "1", "meta": json.dumps(mask.meta),
                        "order": json.dumps(list(mask))})


def test_selection_is_stored_as_positions(tiny_vit, batches):
    mask = select(tiny_vit, batches, "fps", k=2)
    params = dict(tiny_vit.named_parameters())
    ranked = 0
    for n, p in params.items():
        e = mask.entry(n)
        dense = mask[n]
        assert dense.dtype == torch.bool and dense.shape == p.shape and e.count == int(dense.sum()), n
        if e.index is None:
            assert e.count in (0, p.numel()) and e.k is None, n
            continue
        rows = p.shape[0]
        assert e.index.dtype == torch.int32 and e.k == 2 and e.count == 2 * rows, n
        assert torch.equal(e.index.long(), dense.reshape(-1).nonzero().squeeze(1)), n  # sorted flat positions
        # row r's two positions lie in row r
        assert torch.equal(e.index.view(rows, 2).long() // (p.numel() // rows),
                           torch.arange(rows).unsqueeze(1).expand(rows, 2))
        ranked += e.count
    assert mask.nbytes == 4 * ranked  # nothing stored for whole or frozen tensors


def test_file_stores_positions_and_old_files_still_load(tmp_path, tiny_vit, batches):
    from safetensors import safe_open

    mask = select(tiny_vit, batches, "fps", k=1)
    new = mask.save(tmp_path / "new.safetensors")
    with safe_open(str(new), framework="pt") as f:
        assert f.metadata()["version"] == "2"
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert set(stored) == {n for n in mask if mask.entry(n).index is not None}
    assert all(t.dtype == torch.int32 and t.numel() == mask.count(n) for n, t in stored.items())
    old = tmp_path / "old.safetensors"
    _v1_file(old, mask)
    assert old.stat().st_size > 5 * new.stat().st_size  # a bool per parameter vs 4 bytes per trainable entry
    for path in (new, old):
        loaded = Mask.load(path)
        assert list(loaded) == list(mask) and loaded.meta == mask.meta and loaded.stats() == mask.stats()
        assert loaded.nbytes == mask.nbytes  # an old file becomes compact on load
        for n in mask:
            assert torch.equal(loaded[n], mask[n]), n
        loaded.check(tiny_vit)
    assert Mask.load(new).entry("blocks.0.mlp.fc1.weight").k == 1  # the per-row structure survives the file


def _rewrite(path, entries=None, tensors=None, version="2"):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header, stored = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header["version"] = version
    if entries is not None:
        header["entries"] = json.dumps(entries(json.loads(header["entries"])))
    save_file(tensors(stored) if tensors else stored, str(path), metadata=header)


@pytest.mark.parametrize("change, message", [
    (dict(tensors=lambda t: t | {"a": t["a"].flip(0)}), "mask entry 'a' has corrupt positions"),  # not sorted
    (dict(tensors=lambda t: t | {"a": t["a"] + 4}), "mask entry 'a' has corrupt positions"),  # outside the tensor
    (dict(tensors=lambda t: t | {"a": t["a"].float()}), "mask entry 'a' has corrupt positions"),
    (dict(tensors=lambda t: {"x": t["a"]}), "mask entry 'a' has corrupt positions"),  # missing
    (dict(entries=lambda e: [[*e[0][:3], 2]] + e[1:]), "mask entry 'a' has corrupt positions"),  # not 2 per row
    (dict(entries=lambda e: e[1:]), "corrupt mask metadata"),  # a stored tensor the listing lacks
    (dict(entries=lambda e: [["a", [2, -3], "index", None]] + e[1:]), "corrupt mask metadata"),
    (dict(entries=lambda e: {"a": 1}), "corrupt mask metadata"),
    (dict(version="3"), "mask format version 3; this fps-profile reads versions 1 and 2"),
])
def test_load_corrupt_positions_file(tmp_path, change, message):
    path = small_mask().save(tmp_path / "m.safetensors")
    _rewrite(path, **change)
    with pytest.raises(UserError, match=message) as info:
        Mask.load(path)
    one_line(info)


def test_entry_forms_and_per_row_check(tmp_path):
    from fps_profile.selection.mask_entry import MaskEntry, index_dtype

    assert index_dtype(2**31 - 1) == torch.int32 and index_dtype(2**31) == torch.int64
    assert MaskEntry.from_positions((2, 3), torch.arange(6)).full  # every entry: stored as "all"
    assert MaskEntry.from_positions((2, 3), torch.arange(0)).count == 0
    e = MaskEntry.from_positions((2, 3), torch.tensor([1, 5]), k=1)
    assert e.index.dtype == torch.int32 and torch.equal(e.dense(), torch.tensor([[0, 1, 0], [0, 0, 1]]).bool())
    assert torch.equal(e.positions(), torch.tensor([1, 5]))
    assert torch.equal(MaskEntry.all((2,)).positions(), torch.arange(2))
    other = MaskEntry.from_bool(torch.tensor([[1, 1, 0], [0, 0, 1]]).bool())
    assert (e.intersection(other), other.intersection(e)) == (2, 2)
    assert MaskEntry.all((2, 3)).intersection(e) == 2 and MaskEntry.none((2, 3)).intersection(e) == 0
    # positions 1 and 2 are both in row 0: not a per-row top-1 entry, so such a file is refused
    path = Mask({"w": MaskEntry.from_positions((2, 3), torch.tensor([1, 2]), k=1)}).save(tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="corrupt positions"):
        Mask.load(path)
