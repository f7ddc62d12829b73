"""Real data (``--data``): the embedded digits, ImageFolder directories, tensor files and text;
class subsets, the seeded stratified split, seeded batches, the model's own preprocessing
(checked against hand-computed references), and one-line errors."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from fps_profile.measure import phases
from fps_profile.data import check_data_spec, data_batches, load_data, parse_data_spec
from fps_profile.data.split import draw, parse_classes, stratified_split
from fps_profile.errors import UserError
from fps_profile.models import create_model
from fps_profile.rows.cell import Cell
from fps_profile.measure.backends import backend_for

sklearn_datasets = pytest.importorskip("sklearn.datasets")  # the [data] / [test] extra
MEAN, STD = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
COLOURS = {"green": (0, 255, 0), "red": (255, 0, 0), "white": (255, 255, 255)}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text
    return text


@pytest.fixture(scope="module")
def digits_target():
    return torch.from_numpy(sklearn_datasets.load_digits().target.astype(np.int64))


@pytest.fixture(scope="module")
def vit160():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_vit", num_classes=10)  # cfg: 160 px, crop 0.95, bicubic, mean = std = 0.5


# the digits: real, split by class, seeded

def test_digits_are_the_bundled_set_split_by_class(digits_target):
    data = load_data("digits")
    assert data.num_classes == 10 and data.class_names == tuple("0123456789")
    assert torch.equal(data.labels, digits_target) and len(data.labels) == 1797
    train, val = set(data.train.tolist()), set(data.val.tolist())
    assert not train & val and train | val == set(range(1797))
    for c, n in enumerate(np.bincount(digits_target.numpy())):
        in_val = int((digits_target[data.val] == c).sum())
        assert in_val == round(n * 0.2)  # each class keeps its share (178 -> 36, 182 -> 36, ...)
    prov = data.provenance()
    assert prov["data_train"] + prov["data_val"] == 1797 and len(prov["data_sha256"]) == 64
    assert prov["data_sha256"] == load_data("digits", seed=5).provenance()["data_sha256"]  # content, not split


def test_the_split_is_seeded():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not torch.equal(a.val, c.val) and len(a.val) == len(c.val)
    assert len(load_data("digits", val_fraction=0.5).val) == sum(
        round(n * 0.5) for n in np.bincount(a.labels.numpy()))
    assert len(load_data("digits", val_fraction=0).val) == 0


def test_class_subsets_renumber_the_labels(digits_target):
    low, high = load_data("digits:0-4"), load_data("digits", classes="5-9")
    assert low.num_classes == high.num_classes == 5 and high.class_names == tuple("56789")
    for data, offset in ((low, 0), (high, 5)):
        idx = torch.cat([data.train, data.val])
        assert torch.equal(data.labels[idx], digits_target[idx] - offset)
        assert set(digits_target[idx].tolist()) == set(range(offset, offset + 5))
    assert len(low.train) + len(low.val) == int((digits_target < 5).sum())
    odd = load_data("digits:1,3,5")
    assert odd.class_names == ("1", "3", "5") and set(odd.labels[odd.train].tolist()) == {0, 1, 2}


def test_same_seed_same_batches_from_the_training_split():
    data, model = load_data("digits"), make_tiny_vit()
    first = data_batches(data, model, 8, num_batches=3, seed=4)
    again = data_batches(data, model, 8, num_batches=3, seed=4)
    other = data_batches(data, model, 8, num_batches=3, seed=5)
    assert [x.shape for x, _ in first] == [(8, 3, 32, 32)] * 3
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in first)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, again))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, other))
    idx = draw(data.train, 8, 3, 4, "train")
    assert all(torch.equal(y, data.labels[i]) for (_, y), i in zip(first, idx))
    assert set(torch.cat(idx).tolist()) <= set(data.train.tolist())
    half = data_batches(data, model.to(torch.bfloat16), 2, seed=4)[0][0]
    assert half.dtype == torch.bfloat16 and torch.equal(half, first[0][0][:2].to(torch.bfloat16))


def test_draws_use_every_sample_before_repeating_one():
    indices = torch.arange(100, 110)
    batches = draw(indices, 4, 5, seed=0, what="x")  # 20 draws from 10: two shuffled passes
    flat = torch.cat(batches).tolist()
    assert sorted(flat[:10]) == list(range(100, 110)) and sorted(flat[10:]) == list(range(100, 110))
    assert flat != draw(indices, 4, 5, seed=1, what="x")


def test_stratified_split_keeps_one_training_sample_per_class():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    train, val = stratified_split(labels, 0.9, seed=0)
    assert sorted(labels[train].tolist()) == [0, 1, 2]  # round(2*.9)=2 -> 1, round(1*.9)=1 -> 0, 3 -> 2
    assert len(val) == 3


def test_preprocessing_is_the_models_own_eval_transform(vit160):
    """test_vit's cfg by hand: resize to floor(160 / 0.95) = 168 (bicubic, antialiased), centre crop
    160 (offset 4), (x - 0.5) / 0.5; a grey digit repeated over RGB."""
    data = load_data("digits")
    raw = torch.from_numpy(sklearn_datasets.load_digits().images.astype(np.float32)) / 16
    idx = torch.tensor([0, 17, 1796])
    images, labels = data.tensors(idx, vit160)
    ref = raw[idx][:, None].expand(-1, 3, -1, -1)
    ref = F.interpolate(ref, size=(168, 168), mode="bicubic", align_corners=False, antialias=True)
    ref = (ref[:, :, 4:164, 4:164] - 0.5) / 0.5
    assert images.shape == (3, 3, 160, 160) and torch.equal(labels, data.labels[idx])
    # the same interpolation kernel in float32; only the summation order may differ (values are O(1))
    torch.testing.assert_close(images, ref, rtol=0, atol=1e-5)
    small = data.tensors(idx, vit160, image_size=64)[0]
    assert small.shape == (3, 3, 64, 64)  # floor(64 / 0.95) = 67, crop 64


# ImageFolder directories

def _folder(root, layout: dict[str, dict[str, int]], size=(10, 14)):
    """``layout``: subfolder -> class -> image count; every image one constant colour."""
    for sub, classes in layout.items():
        for cls, n in classes.items():
            folder = root / sub / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", size, COLOURS[cls]).save(folder / f"{i}.png")
    return str(root)


def _expected_colour(cls, channels=3):
    """A constant image stays constant through any resize and crop: only the normalisation acts."""
    rgb = torch.tensor(COLOURS[cls], dtype=torch.float32) / 255
    if channels == 1:
        grey = round(float((rgb * torch.tensor([0.299, 0.587, 0.114])).sum()) * 255) / 255  # PIL's 8-bit "L"
        return torch.tensor([(grey - float(MEAN.mean())) / float(STD.mean())])
    return (rgb - MEAN) / STD


def test_an_image_folder_with_train_and_val(tmp_path):
    root = _folder(tmp_path, {"train": {"green": 3, "red": 4}, "val": {"green": 2, "red": 1}})
    data = load_data(root)
    assert data.class_names == ("green", "red") and (len(data.train), len(data.val)) == (7, 3)
    assert data.split_seed is None  # the folder's own split
    model = make_tiny_vit()
    for split, n in (("train", 7), ("val", 3)):
        images, labels = data_batches(data, model, n, split=split)[0]
        assert sorted(labels.tolist()) == sorted(data.labels[data.indices(split)].tolist())
        for x, y in zip(images, labels):  # each image is the colour of its label
            expected = _expected_colour(data.class_names[int(y)])
            torch.testing.assert_close(x, expected[:, None, None].expand_as(x), rtol=0, atol=1e-5)
    red = load_data(f"{root}:red")
    assert red.class_names == ("red",) and (len(red.train), len(red.val)) == (4, 1)


def test_one_image_folder_is_split_here_and_greyed_for_a_one_channel_model(tmp_path):
    from torch import nn

    root = _folder(tmp_path, {".": {"green": 5, "red": 5, "white": 5}})
    data = load_data(root, val_fraction=0.4, seed=3)
    assert (len(data.train), len(data.val)) == (9, 6) and data.split_seed == 3
    grey = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    grey.pretrained_cfg = {"input_size": (1, 12, 12)}  # as the model factory records it
    images, labels = data_batches(data, grey, 6, split="val")[0]
    assert images.shape == (6, 1, 12, 12)
    for x, y in zip(images, labels):
        expected = _expected_colour(data.class_names[int(y)], channels=1)
        torch.testing.assert_close(x, expected[:, None, None].expand_as(x), rtol=0, atol=1e-5)


# tensor files

def test_an_npz_of_x_and_y(tmp_path):
    gen = np.random.default_rng(0)
    x = gen.integers(0, 256, size=(30, 6, 6), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    data = load_data(str(tmp_path / "d.npz"))
    assert data.class_names == ("a", "b", "c") and (len(data.train), len(data.val)) == (24, 6)
    assert torch.equal(data.pool.image(7, 1), torch.from_numpy(x[7]).float()[None] / 255)
    assert torch.equal(data.pool.image(7, 3), (torch.from_numpy(x[7]).float() / 255).expand(3, 6, 6))
    assert data.provenance()["data_sha256"] == hashlib.sha256((tmp_path / "d.npz").read_bytes()).hexdigest()


def test_a_pt_file_with_its_own_split_channels_last(tmp_path):
    train_x = torch.rand(8, 5, 5, 3)  # [N, H, W, C] float in [0, 1]
    val_x = (torch.rand(4, 5, 5, 3) * 255).to(torch.uint8)  # another dtype: both become floats in [0, 1]
    torch.save({"train_x": train_x, "train_y": torch.tensor([0, 1] * 4), "val_x": val_x,
                "val_y": torch.tensor([1, 0, 1, 0])}, tmp_path / "d.pt")
    data = load_data(str(tmp_path / "d.pt"))
    assert data.class_names == ("0", "1") and (len(data.train), len(data.val)) == (8, 4)
    assert torch.equal(data.pool.image(2, 3), train_x[2].permute(2, 0, 1))
    assert torch.equal(data.pool.image(9, 3), val_x[1].permute(2, 0, 1).float() / 255)
    images, labels = data_batches(data, make_tiny_vit(), 4, split="val")[0]
    assert images.shape == (4, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_bad_tensor_files_fail_in_one_line(tmp_path):
    marker = tmp_path / "it-ran"

    class Evil:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 4, 4)), labels=np.zeros(2))
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 4, 4, 4, 4)), y=np.zeros(2, dtype=np.int64))
    np.savez(tmp_path / "flabels.npz", x=np.zeros((2, 4, 4)), y=np.zeros(2))
    np.savez(tmp_path / "count.npz", x=np.zeros((3, 4, 4)), y=np.zeros(2, dtype=np.int64))
    np.savez(tmp_path / "names.npz", x=np.zeros((2, 4, 4)), y=np.array([0, 2]), classes=np.array(["a", "b"]))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"x": torch.zeros(2, 4, 4), "y": torch.zeros(2, dtype=torch.long), "e": Evil()}, tmp_path / "evil.pt")
    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"x": 1}, f)
    cases = {
        "keys.npz": "has keys 'images', 'labels'; expected x and y",
        "shape.npz": "'x' has shape [2, 4, 4, 4, 4]",
        "flabels.npz": "'y' must be 2 integer labels",
        "count.npz": "'y' must be 3 integer labels",
        "names.npz": "'classes' must name each of the 3 classes once",
        "corrupt.npz": "cannot be read",
        "evil.pt": "refused: loading it would call exec (arbitrary code)",
        "raw.pt": "refused: not a torch.save file",
    }
    for name, expected in cases.items():
        with pytest.raises(UserError) as exc:
            load_data(str(tmp_path / name))
        assert expected in one_line(exc), name
    assert not marker.exists()


# text for language models

def _gpt2_tiny():
    torch.manual_seed(0)
    return create_model("hf:gpt2-tiny")


def test_byte_level_text_batches_are_slices_of_the_file(tmp_path):
    text = "".join(f"{i:05d}," for i in range(300)) + "Ünïcödé ✓\n"  # no two 16-byte chunks alike
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    raw = text.encode("utf-8")
    data = load_data(str(tmp_path / "t.txt"), val_fraction=0.25)
    assert data.tokenizer == "bytes" and data.tokens.tolist() == list(raw)
    model, seq_len = _gpt2_tiny(), 16
    chunks = {tuple(raw[i * seq_len:(i + 1) * seq_len]) for i in range(len(raw) // seq_len)}
    train = {tuple(r) for r in data.sequences(seq_len, "train").tolist()}
    val = {tuple(r) for r in data.sequences(seq_len, "val").tolist()}
    n = len(raw) // seq_len
    assert len(chunks) == n and train | val == chunks and not train & val and len(val) == round(n * 0.25)
    batches = data_batches(data, model, 4, num_batches=3, seed=2, seq_len=seq_len)
    for ids, labels in batches:
        assert ids.shape == (4, seq_len) and ids.dtype == torch.int64 and ids is labels  # as token_batches gives
        assert {tuple(r) for r in ids.tolist()} <= train
    again = data_batches(data, model, 4, num_batches=3, seed=2, seq_len=seq_len)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in
                   zip(batches, data_batches(data, model, 4, num_batches=3, seed=3, seq_len=seq_len)))
    # a language model trains on them as on token_batches
    cell = Cell(model="hf:gpt2-tiny", batch_size=4, phase="train_step", seq_len=seq_len)
    loss = phases.prepare(cell, model, batches, backend_for("cpu")).fn()
    assert torch.isfinite(loss) and abs(float(loss) - math.log(256)) < 2  # near uniform over 256 bytes at init


def test_jsonl_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1, "hello": 2, "world": 3, "fps": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(
        tmp_path / "tok")
    lines = [{"text": "hello world"}, {"text": "fps hello zzz", "id": 7}, {"text": "world"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    data = load_data(str(tmp_path / "d.jsonl"), tokenizer=str(tmp_path / "tok"))
    assert data.tokens.tolist() == [2, 3, 1, 4, 2, 0, 1, 3, 1]  # each document, then EOS
    assert data.tokenizer == str((tmp_path / "tok").resolve())
    ids, _ = data_batches(data, _gpt2_tiny(), 2, seq_len=2)[0]
    assert ids.shape == (2, 2)


def test_bad_text_fails_in_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "short.txt").write_text("tiny")
    config = json.loads((Path(__file__).parents[1] / "fps_profile/models/configs/gpt2-tiny.json").read_text())
    (tmp_path / "small-vocab.json").write_text(json.dumps({**config, "vocab_size": 64}))
    cases = [
        (lambda: load_data(str(tmp_path / "bad.jsonl")), "line 2 is not JSON"),
        (lambda: load_data(str(tmp_path / "notext.jsonl")), "line 1 has no string field 'text'"),
        (lambda: load_data(str(tmp_path / "latin1.txt")), "is not UTF-8 text"),
        (lambda: load_data(str(tmp_path / "short.txt"), tokenizer=str(tmp_path / "none")), "no such directory"),
        (lambda: load_data(str(tmp_path / "short.txt"), tokenizer=str(tmp_path)), "cannot be loaded"),
        (lambda: load_data(f"{tmp_path / 'short.txt'}", classes="0-1"), "applies to image data"),
        (lambda: data_batches(load_data(str(tmp_path / "short.txt")), _gpt2_tiny(), 1, seq_len=8),
         "has 4 tokens, fewer than one sequence of 8"),
        (lambda: data_batches(load_data(str(tmp_path / "short.txt")), _gpt2_tiny(), 1, seq_len=2048),
         "longer than the model allows (1024 positions)"),
        (lambda: data_batches(load_data(str(tmp_path / "short.txt")),
                              create_model(f"hf:{tmp_path / 'small-vocab.json'}"), 1, seq_len=2),
         "has token ids up to 121, beyond the model's vocabulary of 64; give a tokenizer"),
    ]
    for call, expected in cases:
        with pytest.raises(UserError) as exc:
            call()
        assert expected in one_line(exc), expected


# wrong pairings, names and paths

def test_data_and_model_must_match(tmp_path):
    (tmp_path / "t.txt").write_text("some text " * 10)
    text, digits, vit = load_data(str(tmp_path / "t.txt")), load_data("digits"), make_tiny_vit()
    cases = [
        (lambda: data_batches(text, vit, 2), "is text; an image model needs images"),
        (lambda: data_batches(digits, _gpt2_tiny(), 2), "is image data; a language model needs text"),
        (lambda: data_batches(digits, vit, 2, seq_len=8), "a sequence length applies to language models"),
        (lambda: data_batches(text, _gpt2_tiny(), 2, image_size=32, seq_len=4), "--image-size applies to image"),
        (lambda: data_batches(digits, vit, 0), "batch size must be an integer >= 1"),
        (lambda: data_batches(digits, vit, 2, num_batches=0), "num_batches must be an integer >= 1"),
        (lambda: data_batches(digits, vit, 2, split="test"), "unknown split 'test'"),
        (lambda: data_batches(load_data("digits", val_fraction=0), vit, 2, split="val"), "has no samples"),
    ]
    import timm

    five = timm.create_model("test_vit", num_classes=5)
    cases.append((lambda: data_batches(digits, five, 2), "has 10 classes, the model's classifier 5"))
    for call, expected in cases:
        with pytest.raises(UserError) as exc:
            call()
        assert expected in one_line(exc), expected


def test_bad_data_specs_fail_in_one_line(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    (tmp_path / "empty").mkdir()
    _folder(tmp_path / "mixed", {"train": {"red": 1}, "val": {"red": 1, "green": 1}})
    cases = {
        "digts": "did you mean 'digits'",
        str(tmp_path / "nope"): "no such file or directory",
        "nope.npz": "no such file or directory",
        str(tmp_path / "d.csv"): "unknown format '.csv'",
        str(tmp_path / "empty"): "data '",
        str(tmp_path / "mixed"): "val/ has classes train/ lacks: green",
        "digits:0-11": "unknown class of data 'digits:0-11' '10'",
        "digits:4-2": "class range '4-2' is empty",
        "digits:1,1": "names a class twice",
        "digits:,": "names no class",
    }
    for spec, expected in cases.items():
        with pytest.raises(UserError) as exc:
            load_data(spec)
        assert expected in one_line(exc), spec
    for fraction in (1.0, -0.1, "0.2", True):
        with pytest.raises(UserError) as exc:
            load_data("digits", val_fraction=fraction)
        one_line(exc)
    assert parse_data_spec(str(tmp_path / "d.csv")) == (str(tmp_path / "d.csv"), None)
    assert parse_data_spec("digits:0-4") == ("digits", "0-4")
    assert check_data_spec("digits") == "digits" and check_data_spec(str(tmp_path / "mixed")) == "folder"
    assert parse_classes(["a", "b"], ("b", "a", "c"), "x") == [0, 1]


def test_digits_feed_every_phase_of_a_model_built_for_them():
    data = load_data("digits:0-4")
    torch.manual_seed(0)
    model = make_tiny_vit()
    model.reset_classifier(data.num_classes)
    batches = data_batches(data, model, 8, num_batches=2)
    for phase, selector in (("select", "fps"), ("inference", None), ("train_step", "fps")):
        cell = Cell(model="digits-test", batch_size=8, phase=phase, selector=selector)
        out = phases.prepare(cell, model, batches, backend_for("cpu")).fn()
        assert out is not None
