"""Inputs at the model's own size, or at ``--image-size``: batches, models, cells, rows, keys."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from fps_profile import UserError
from fps_profile.cli import build_parser
from fps_profile.cli.sweep_cmd import build_grid
from fps_profile.models import build_timm, input_size, synthetic_batches
from fps_profile.rows.result import Result
from fps_profile.rows.store import read_results
from fps_profile.rows.cell import Cell
from fps_profile.measure.runner import measure


def meta(name: str, **kwargs):
    with torch.device("meta"):
        return build_timm(name, **kwargs)


@pytest.mark.parametrize("name, size", [("fastvit_t8", 256), ("inception_v3", 299), ("resnet10t", 176),
                                        ("vit_tiny_patch16_224", 224)])
def test_each_model_gets_its_own_input_size(name, size):
    model = meta(name)
    assert input_size(model) == (3, size, size)
    assert input_size(model, 96) == (3, 96, 96)


def test_synthetic_batches_and_the_model_follow_image_size():
    model = build_timm("test_vit", image_size=64)  # a ViT is built for the size: fewer positions
    assert model.pos_embed.shape[1] == (64 // 16) ** 2 + 1
    (images, labels), = synthetic_batches(model, 2, image_size=64)
    assert images.shape == (2, 3, 64, 64) and labels.shape == (2,)
    cnn = build_timm("test_resnet", image_size=48)  # a CNN takes any size as it is
    assert synthetic_batches(cnn, 1, image_size=48)[0][0].shape == (1, 3, 48, 48)
    assert synthetic_batches(cnn, 1)[0][0].shape == (1, 3, 160, 160)
    with pytest.raises(UserError, match="image size must be an integer >= 1( or none)?, not 0"):
        synthetic_batches(cnn, 1, image_size=0)


def test_a_model_without_classifier_gets_one():
    model = meta("eva02_tiny_patch14_224")  # MIM checkpoint config: num_classes=0
    assert model.num_classes == 1000 and model.get_classifier().out_features == 1000
    assert meta("eva02_tiny_patch14_224", num_classes=0).num_classes == 0  # unless asked for


def test_key_has_image_size_only_when_set_and_old_rows_load(tmp_path):
    old = {"schema": "fps-profile/results/1", "selector": "fps", "model": "m", "batch_size": 2, "dtype": "float32",
           "device": "cpu", "phase": "select", "budget": "k=1", "scope": "gps"}
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    row, = read_results(path)
    assert row.image_size is None
    assert row.key() == ("fps", "m", 2, "float32", "cpu", "select", "k=1", "gps")
    sized = Result(**{k: v for k, v in old.items() if k != "schema"}, image_size=96)
    assert sized.key() == row.key() + (96,)
    cell = Cell(model="m", batch_size=2, selector="fps", image_size=96)
    assert cell.key() == sized.key() and Cell.from_json(cell.to_json()) == cell
    assert Cell(model="m", batch_size=2, selector="fps").key() == row.key()
    assert "96px" in cell.label()
    from fps_profile.analysis.summary import summarize

    lines = summarize([row, sized])  # the same model at two sizes: two groups, told apart
    assert [s.model for s in lines] == ["m", "m @96px"]


def test_sweep_flag_and_toml_set_the_cells(tmp_path):
    conf = tmp_path / "grid.toml"
    conf.write_text(textwrap.dedent('''
        models = ["test_vit"]
        selectors = ["magnitude"]
        batch_sizes = [1]
        image_size = 96
    '''))
    args = build_parser().parse_args(["sweep", "--config", str(conf)])
    assert {c.image_size for c in build_grid(args).cells()} == {96}
    args = build_parser().parse_args(["sweep", "--config", str(conf), "--image-size", "128"])
    grid = build_grid(args)
    assert {c.image_size for c in grid.cells()} == {128}
    grid.image_size = 0
    with pytest.raises(UserError, match="image size must be an integer >= 1( or none)?, not 0"):
        grid.validate()


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_measured_rows_at_an_image_size(device):
    small = measure(Cell(model="test_vit", batch_size=2, phase="inference", device=device, image_size=64,
                         warmup=0, repeats=1))
    full = measure(Cell(model="test_vit", batch_size=2, phase="inference", device=device, warmup=0, repeats=1))
    assert small.status == full.status == "ok", (small.error, full.error)
    assert small.image_size == 64 and full.image_size is None
    assert full.params_total - small.params_total == ((160 // 16) ** 2 - (64 // 16) ** 2) * 64  # pos_embed rows
    assert small.peak_allocated_bytes < full.peak_allocated_bytes


def test_sim_keeps_its_message_for_a_model_it_cannot_build(monkeypatch):
    import timm

    def broken(*args, **kwargs):
        raise RuntimeError("item() on a meta tensor")

    monkeypatch.setattr(timm, "create_model", broken)
    row = measure(Cell(model="test_vit", batch_size=1, phase="inference", device="sim"))
    assert row.status == "error"
    assert row.error == ("UserError: sim cannot build 'test_vit' without real tensors (item() on a meta tensor); "
                         "measure it on a real device (--device cpu or cuda)")


def test_select_cli_takes_image_size(capsys):
    from fps_profile.cli import main

    assert main(["select", "--model", "test_vit", "--selector", "magnitude", "--image-size", "32",
                 "--batch-size", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # test_vit (width 64, 16-pixel patches) at 32 px keeps 2x2 + 1 positions instead of 10x10 + 1
    assert out["stats"]["total"] == sum(p.numel() for p in build_timm("test_vit").parameters()) - (101 - 5) * 64
