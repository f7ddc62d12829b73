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
    assert m.nbytes == 14
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
    # x: inter 1, union 3; y: inter 1, union 3 -> 2 / 6
    assert a.overlap(b) == pytest.approx(2 / 6)
    assert b.overlap(a) == pytest.approx(2 / 6)
    assert a.overlap(a) == 1.0
    assert a.overlap(dict(b)) == pytest.approx(2 / 6)  # any mapping of tensors
    none = {"x": torch.zeros(4, dtype=torch.bool), "y": torch.zeros(2, 2, dtype=torch.bool)}
    assert Mask(none).overlap(none) == 1.0  # two empty masks agree
    assert a.overlap(none) == 0.0


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
