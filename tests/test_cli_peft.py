"""``fps-profile select --shira R --peft-adapter DIR``: a selection written as a PEFT SHiRA adapter
from the command line, on timm's small ``test_vit``."""

from __future__ import annotations

import json

import pytest
from conftest import needs_peft
import torch

from fps_profile import Mask
from fps_profile.cli import main
from fps_profile.integrations.peft_read import mask_from_adapter
from fps_profile.models import create_model

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning"),
              pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]
SELECT = ["select", "--model", "test_vit", "--selector", "fps", "--batch-size", "2"]




def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fps-profile: error: "), err
    return lines[0]


@needs_peft
def test_select_writes_the_mask_as_an_adapter_that_reads_back_as_the_same_mask(tmp_path, capsys):
    adapter, saved = tmp_path / "adapter", tmp_path / "mask.safetensors"
    assert main([*SELECT, "--shira", "2", "--scope", "shira", "--peft-adapter", str(adapter),
                 "--out", str(saved), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget"] == "shira:2" and out["scope"] == "shira"
    assert out["peft_adapter"]["r"] == 2 and out["peft_adapter"]["modules_to_save"] == ["head"]
    assert out["peft_adapter"]["left_out"] == []
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    mask = Mask.load(saved)
    torch.manual_seed(0)
    again = mask_from_adapter(create_model("test_vit"), adapter)
    assert set(again) == set(mask)
    for name in mask:  # entry by entry: the adapter holds exactly the selection
        assert torch.equal(again[name], mask[name]), name
    # 2 * (out + in) entries of every Linear weight but the head, which is trained whole
    model = create_model("test_vit")
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "head"]
    head = sum(p.numel() for p in model.head.parameters())
    assert out["stats"]["trainable"] == sum(2 * (m.in_features + m.out_features) for m in linear) + head


@needs_peft
def test_a_mask_peft_cannot_hold_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    line = _error(capsys, *SELECT, "--k", "1", "--scope", "shira", "--peft-adapter", str(adapter))
    assert "r*(m+n)" in line and "--shira" in line
    line = _error(capsys, *SELECT, "--shira", "2", "--peft-adapter", str(adapter))  # gps scope: the patch conv
    assert "patch_embed.proj.weight" in line and "partial" in line
    assert not adapter.exists() and list(tmp_path.iterdir()) == []
    assert main([*SELECT, "--shira", "2", "--peft-adapter", str(adapter), "--peft-partial"]) == 0
    out = capsys.readouterr().out
    assert "left out" in out and adapter.is_dir()
    left = json.loads((adapter / "fps_profile_mask.json").read_text())["left_out"]
    assert "patch_embed.proj.weight" in {name for name, _ in left}


def test_adapter_directory_and_flags_are_checked_before_selecting(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    assert "not an empty directory" in _error(capsys, *SELECT, "--shira", "2", "--peft-adapter", str(busy))
    assert "does not exist" in _error(capsys, *SELECT, "--shira", "2", "--peft-adapter",
                                      str(tmp_path / "no" / "dir"))
    assert "--peft-adapter" in _error(capsys, *SELECT, "--peft-partial")
    with pytest.raises(SystemExit) as exit_:  # argparse's own check: one budget
        main([*SELECT, "--shira", "2", "--k", "1"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert list(busy.iterdir()) == [busy / "x"]
