"""Every command takes the models and devices a sweep takes: select on the sim, scope of a language
model, explain's --cell keys and columns from the cell schema, and files whose figures are not numbers."""

from __future__ import annotations

import json

import pytest

from fps_profile.cli import main
from fps_profile.rows.cell import Cell
from plotrows import write_results

MODEL = "test_vit"


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _json(capsys, *argv) -> dict:
    rc, out, err = _run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("budget", [["--k", "1"], ["--k", "3"], ["--fraction", "0.01"]])
def test_select_on_the_sim_predicts_the_counts_of_the_real_mask(capsys, budget):
    common = ["select", "--model", MODEL, "--batch-size", "2", "--selector", "fps", *budget]
    real = _json(capsys, *common)["stats"]
    sim = _json(capsys, *common, "--device", "sim:h100")
    assert sim["predicted"] and sim["status"] == "ok" and sim["peak_allocated_bytes"] > 0 and sim["flops"] > 0
    # the budget and the scope fix the counts without scores: exact in total, and per tensor for k
    assert sim["stats"]["trainable"] == real["trainable"] and sim["stats"]["total"] == real["total"]
    if budget[0] == "--k":
        per = lambda s: {t["name"]: t["trainable"] for t in s["tensors"]}  # noqa: E731
        assert per(sim["stats"]) == per(real)


def test_select_on_the_sim_matches_a_sweep_row(capsys):
    from fps_profile.measure.runner import measure

    sim = _json(capsys, "select", "--model", MODEL, "--batch-size", "2", "--selector", "gps", "--device", "sim")
    row = measure(Cell(model=MODEL, batch_size=2, phase="select", selector="gps", device="sim", warmup=0, repeats=1))
    assert (sim["peak_allocated_bytes"], sim["flops"]) == (row.peak_allocated_bytes, row.flops)
    rc, out, err = _run(capsys, "select", "--model", MODEL, "--batch-size", "2", "--device", "sim")
    assert rc == 0 and "predicted, no mask computed" in out.splitlines()[0] and "peak " in out.splitlines()[1]


def test_select_on_the_sim_writes_no_mask(tmp_path, capsys):
    rc, out, err = _run(capsys, "select", "--model", MODEL, "--device", "sim", "--out", str(tmp_path / "m.st"))
    assert rc == 2 and "a mask needs real tensors" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    rc, out, err = _run(capsys, "select", "--model", MODEL, "--device", "sim:b200")
    assert rc == 2 and "unknown sim target 'b200'" in err


def test_scope_of_a_language_model(capsys):
    import torch

    from fps_profile.models import create_model
    from fps_profile.selection.scope import Role, explain_roles

    data = _json(capsys, "scope", "hf:llama-tiny")
    with torch.device("meta"):
        model = create_model("hf:llama-tiny", device="meta")
    expected = {n: r.value for n, (r, *_) in explain_roles(model, "gps").items()}
    assert data["tensors"] == expected
    assert data["tensors"]["model.layers.0.self_attn.q_proj.weight"] == Role.RANKED.value
    assert data["tensors"]["model.embed_tokens.weight"] == Role.FROZEN.value
    rc, out, err = _run(capsys, "scope", "hf:llama-tiny", "--image-size", "64")
    assert rc == 2 and "--image-size applies to image models" in err


def _lm_rows(path):
    rows = [Cell(model="hf:llama-tiny", batch_size=b, phase="select", selector="fps", device="sim", seq_len=s)
            .empty_row(peak_allocated_bytes=1000 * b * s) for b in (1, 2) for s in (64, 128)]
    rows.append(Cell(model="hf:llama-tiny", batch_size=1, phase="select", selector="fps", device="sim", seq_len=64,
                     amp="bf16").empty_row(peak_allocated_bytes=7))
    write_results(path, rows)
    return str(path)


def test_explain_shows_and_filters_every_axis_a_row_sets(tmp_path, capsys):
    path = _lm_rows(tmp_path / "lm.jsonl")
    rc, out, err = _run(capsys, "explain", path)
    head = out.splitlines()[0]
    assert rc == 0 and "| seq_len |" in head and "| amp " in head and "image_size" not in head
    rc, out, err = _run(capsys, "explain", path, "--cell", "seq_len=128 batch=2")
    assert rc == 0 and out.startswith("hf:llama-tiny seq=128 b=2 float32 sim fps: peak")
    rc, out, err = _run(capsys, "explain", path, "--cell", "seq_len=64,batch=1,amp=none")
    assert rc == 0 and out.count("peak ") == 1 and "+bf16" not in out
    rc, out, err = _run(capsys, "explain", path, "--cell", "amp=bf16")
    assert rc == 0 and "+bf16" in out.splitlines()[0]
    rc, out, err = _run(capsys, "explain", path, "--cell", "seq_len=100")
    assert rc == 2 and "unknown seq_len in this file '100'" in err and "known: 128, 64" in err
    rc, out, err = _run(capsys, "explain", path, "--cell", "seq_len=long")
    assert rc == 2 and "--cell seq_len=long: sequence length must be an integer" in err


@pytest.mark.parametrize("field, value, needle", [
    ("peak_allocated_bytes", "abc", "field 'peak_allocated_bytes' must be a number, not 'abc'"),
    ("wall_time_s", True, "field 'wall_time_s' must be a number, not True"),
    ("wall_times_s", [0.1, "x"], "field 'wall_times_s' must be a list of numbers"),
    ("peak_breakdown_bytes", {"weights": "lots"}, "field 'peak_breakdown_bytes' must be an object of numbers"),
    ("status", "fine", "field 'status' must be one of ok, oom, error, timeout"),
])
@pytest.mark.parametrize("command", ["gate", "report", "plot", "explain", "frontier"])
def test_a_figure_that_is_not_a_number_is_one_line(tmp_path, capsys, field, value, needle, command):
    good = Cell(model=MODEL, batch_size=1, phase="select", selector="fps").empty_row(peak_allocated_bytes=10,
                                                                                     wall_time_s=0.1)
    write_results(tmp_path / "good.jsonl", [good])
    data = json.loads(good.to_json())
    data[field] = value
    (tmp_path / "bad.jsonl").write_text(json.dumps(data) + "\n")
    bad, ok = str(tmp_path / "bad.jsonl"), str(tmp_path / "good.jsonl")
    argv = {"gate": [ok, bad], "report": [bad, "--out", str(tmp_path / "r.md")], "explain": [bad],
            "plot": [bad, "--out", str(tmp_path / "f")], "frontier": [bad, "--out", str(tmp_path / "f")]}[command]
    rc, out, err = _run(capsys, command, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert f"bad.jsonl:1: not a valid results row ({needle}" in err
