"""``fps-profile scope``: every tensor's role, grouped, in text and JSON; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fps_profile.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def meta_model(name: str) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def test_vit_base_fits_a_screen_and_matches_by_hand(capsys):
    code, out, err = run(capsys, "scope", "vit_base_patch16_224")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) <= 25
    assert lines[0] == "vit_base_patch16_224: scope gps; classifier: head (from pretrained_cfg)"
    assert any("blocks.*.mlp.fc*.weight" in ln and "| ranked" in ln and "| 24 " in ln for ln in lines)
    assert any("head.{weight,bias}" in ln and "classifier" in ln and "trainable" in ln for ln in lines)
    # by hand: 12 blocks x (qkv 768x2304 + proj 768x768 + fc1 768x3072 + fc2 3072x768) + patch kernel 768x3x16x16
    ranked = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 768 * 3 * 16 * 16
    assert f"ranked       49 tensors {ranked:>14,} parameters" in out


def test_json_lists_every_tensor_and_sums(capsys):
    code, out, _ = run(capsys, "scope", "resnet18", "--json")
    assert code == 0
    data = json.loads(out)
    model = meta_model("resnet18")
    params = dict(model.named_parameters())
    assert list(data["tensors"]) == list(params)
    assert data["classifier"] == {"modules": ["fc"], "source": "pretrained_cfg"}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert data["tensors"][f"{name}.weight"] == data["tensors"][f"{name}.bias"] == "frozen"
    assert data["tensors"]["fc.weight"] == "trainable"
    assert data["params_total"] == sum(p.numel() for p in params.values())
    assert sum(g["params"] for g in data["groups"]) == data["params_total"]
    assert sum(r["params"] for r in data["roles"].values()) == data["params_total"]
    by_role = {}
    for name, role in data["tensors"].items():
        by_role[role] = by_role.get(role, 0) + params[name].numel()
    assert {r: v["params"] for r, v in data["roles"].items()} == by_role


def test_other_scope_and_image_size(capsys):
    code, out, _ = run(capsys, "scope", "vit_tiny_patch16_224", "--scope", "attention", "--image-size", "64",
                       "--json")
    data = json.loads(out)
    assert code == 0 and data["scope"] == "attention"
    assert data["tensors"]["pos_embed"] == "frozen"
    ranked = {n for n, r in data["tensors"].items() if r == "ranked"}
    assert ranked == {f"blocks.{i}.attn.{m}.weight" for i in range(12) for m in ("qkv", "proj")}
    assert data["params_total"] == sum(p.numel() for p in meta_model("vit_tiny_patch16_224").parameters()) \
        - (197 - 17) * 192  # a 64x64 input has 16 patches + the class token


@pytest.mark.parametrize("argv, expected", [
    (["scope", "resnet5O"], "fps-profile: error: unknown timm model 'resnet5O'; did you mean 'resnet50'"),
    (["scope", "resnet18", "--scope", "atention"], "fps-profile: error: unknown scope 'atention'; did you mean"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(expected) and err.count("\n") == 1


def test_a_model_timm_cannot_build_is_one_line(capsys, monkeypatch):
    import timm

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in stage 2\nmore lines of detail")

    monkeypatch.setattr(timm, "create_model", broken)
    code, out, err = run(capsys, "scope", "resnet18")
    assert code == 2
    assert err == "fps-profile: error: timm cannot build 'resnet18': RuntimeError: shape mismatch in stage 2\n"


def test_output_into_a_closed_pipe_ends_quietly():
    """`fps-profile ... | head` with the reader gone: exit 141, no traceback, no 'Exception ignored'."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "fps_profile", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
