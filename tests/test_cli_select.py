"""``fps-profile select`` and ``list`` run in-process on timm's small ``test_vit`` (160 px)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fps_profile import Mask
from fps_profile.cli import main

MODEL = "test_vit"


def run_ok(capsys, *argv) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    return out


def run_error(capsys, *argv) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fps-profile: error: ")
    return lines[0]


def test_select_writes_a_loadable_mask_and_prints_stats(tmp_path, capsys):
    out_path = tmp_path / "fps.safetensors"
    out = run_ok(capsys, "select", "--model", MODEL, "--selector", "fps", "--k", "2",
                 "--batch-size", "2", "--out", str(out_path))
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"fps on {MODEL} (per-row top-2, scope gps, batch 2 x 1, float32, cpu)")
    assert lines[-1] == f"mask written to {out_path}"
    m = re.fullmatch(r"trainable ([\d,]+) of ([\d,]+) parameters \(([\d.]+)%\)", lines[-3])
    assert m, lines[-3]
    mask = Mask.load(out_path)
    stats = mask.stats()
    assert int(m.group(1).replace(",", "")) == stats.trainable
    assert int(m.group(2).replace(",", "")) == stats.total
    b = re.fullmatch(r"ranked entries ([\d,]+); whole tensors ([\d,]+) \(biases, head, layer scales\); "
                     r"without the head: ([\d,]+) of ([\d,]+) \([\d.]+%\)", lines[-2])
    assert b, lines[-2]
    num = [int(g.replace(",", "")) for g in b.groups()]
    assert num[0] + num[1] == stats.trainable
    body = [n for n in mask if "head" not in n]
    assert num[2] == sum(int(mask[n].sum()) for n in body)
    assert num[3] == sum(mask[n].numel() for n in body)
    assert mask.meta["selector"] == "fps" and mask.meta["model"] == MODEL
    assert mask.meta["budget"] == "per-row top-2" and mask.meta["scope"] == "gps"

    import timm

    model = timm.create_model(MODEL, pretrained=False)
    mask.check(model)
    assert stats.total == sum(p.numel() for p in model.parameters())
    assert int(mask["patch_embed.proj.weight"].sum()) == 2 * model.patch_embed.proj.out_channels
    assert mask["head.weight"].all() and not mask["pos_embed"].any()


def test_select_json_and_per_tensor(capsys):
    data = json.loads(run_ok(capsys, "select", "--model", MODEL, "--selector", "random", "-o", "seed=3",
                             "--fraction", "0.01", "--batch-size", "1", "--json"))
    assert data["selector"] == "random" and data["model"] == MODEL and data["out"] is None
    assert data["budget"] == "global top-0.01"
    assert data["options"] == repr([("seed", 3)])
    assert data["stats"]["trainable"] > 0 and data["stats"]["total"] > data["stats"]["trainable"]
    out = run_ok(capsys, "select", "--model", MODEL, "--selector", "magnitude", "--batch-size", "1", "--per-tensor")
    assert "blocks.0.attn.qkv.weight" in out and "per-row top-1" in out  # k defaults to 1


def test_select_gps_ce_option(capsys):
    out = run_ok(capsys, "select", "--model", MODEL, "--selector", "gps", "-o", "loss=ce", "-o", "views=1",
                 "--batch-size", "2", "--json")
    data = json.loads(out)
    assert data["options"] == repr([("loss", "ce"), ("views", 1)])


@pytest.mark.parametrize("argv, expected", [
    (["--selector", "fsp"], "unknown selector 'fsp'; did you mean 'fps'"),
    (["-o", "nope=1"], "selector 'fps' has no option 'nope'"),
    (["-o", "novalue"], "selector option must look like key=value"),
    (["--k", "0"], "k must be an integer >= 1"),
    (["--k", "100000"], "is larger than a row of"),
    (["--fraction", "1.5"], "fraction must be in (0, 1]"),
    (["--fraction", "0"], "fraction must be in (0, 1]"),
    (["--model", "test_vti"], "unknown timm model 'test_vti'; did you mean"),
    (["--dtype", "float64"], "unknown dtype 'float64'"),
    (["--scope", "atention"], "unknown scope 'atention'; did you mean 'attention'"),
    (["--device", "tpu"], "device"),
])
def test_select_bad_input_is_one_line_exit_2(capsys, argv, expected):
    line = run_error(capsys, "select", "--model", MODEL, "--batch-size", "1", *argv)
    assert expected in line


def test_select_out_in_missing_directory_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import fps_profile.models

    def no_model(*a, **k):
        raise AssertionError("the model was built although --out cannot be written")

    monkeypatch.setattr(fps_profile.models, "create_model", no_model)
    line = run_error(capsys, "select", "--model", MODEL, "--batch-size", "1", "--selector", "magnitude",
                     "--out", str(tmp_path / "missing" / "m.safetensors"))
    assert "cannot write mask" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_select_cuda_without_gpu(capsys):
    line = run_error(capsys, "select", "--model", MODEL, "--device", "cuda")
    assert "no CUDA GPU is available" in line


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--k", "1", "--fraction", "0.1"], ["--k", "x"]])
def test_select_argparse_errors_exit_2_without_traceback(capsys, argv):
    # argparse's own errors: exit status 2, exactly one "fps-profile: error:" line, no traceback
    with pytest.raises(SystemExit) as info:
        main(["select", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("fps-profile: error: select: ")


def test_debug_flag_shows_the_exception(capsys):
    from fps_profile import UserError

    with pytest.raises(UserError, match="did you mean 'fps'"):
        main(["--debug", "select", "--selector", "fsp"])


def test_list_selectors_and_scopes(capsys):
    out = run_ok(capsys, "list")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert {"fps", "gps", "magnitude", "random", "snip", "wanda"} <= set(names)
    fps_line = next(line for line in out.splitlines() if line.startswith("fps "))
    gps_line = next(line for line in out.splitlines() if line.startswith("gps "))
    assert "forward" in fps_line and "backward" in gps_line
    scopes = [line.split()[0] for line in run_ok(capsys, "list", "scopes").splitlines() if not line.startswith("(")]
    assert scopes == ["all-weights", "attention", "gps", "gps+lm-head", "linear", "mlp", "shira"]
    assert run_ok(capsys, "list", "models", "test_vit").split() == ["test_vit"]


def test_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: fps-profile" in capsys.readouterr().out
