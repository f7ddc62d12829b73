"""Where a cell's model, weights and data come from, and one seed for everything random in it.

The new axes (``weights``, ``data``, ``seed``, ``steps``, ``lr``) keep old keys; paths are resolved
before cells leave; the same command gives the same mask, another seed another; weights files
load and change FPS's mask; bad paths end in one line (exit 2) before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import torch

from fps_profile import Mask
from fps_profile.cli import main
from fps_profile.measure.inputs import build_inputs
from fps_profile.measure.runner import measure
from fps_profile.rows.cell import Cell
from fps_profile.rows.result import Result
from fps_profile.rows.schema import axis
from fps_profile.rows.store import read_results
from test_finetune import TINY

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> str:
    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINY))
    monkeypatch.chdir(tmp_path)
    return str(tmp_path / "tinynet.py")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, *argv) -> str:
    rc, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("fps-profile: error: "), err
    assert "Traceback" not in out + err
    return lines[0]


# -- keys and paths ----------------------------------------------------------------------------------


def test_old_rows_keep_their_keys():
    old = {"selector": "fps", "model": "vit_tiny_patch16_224", "batch_size": 4, "dtype": "float32",
           "device": "cpu", "phase": "select", "budget": "k=1", "scope": "gps"}
    row = Result.from_dict(old)
    assert row.seed is None and row.weights is None and row.steps is None
    assert row.key() == ("fps", "vit_tiny_patch16_224", 4, "float32", "cpu", "select", "k=1", "gps")
    assert Cell(**{k: v for k, v in old.items()}).key() == row.key()  # seed 0 and no data: as before
    assert Cell(**old, seed=2).key() == row.key() + (("seed", 2),)
    new_axes = {"weights", "data", "seed", "steps", "lr"}
    for path in sorted((ROOT / "results").glob("*.jsonl")):  # every committed row keeps its key
        if path.name.startswith("quality-"):  # the quality study, written with the new axes set
            continue
        for r in read_results(path):
            assert not {k[0] for k in r.key() if isinstance(k, tuple)} & new_axes, (path, r.key())


def test_baselines_and_untrained_phases_take_no_budget_steps_or_rate():
    head = Cell(model="m", batch_size=2, phase="finetune", selector="head", budget="k=4", steps=50, lr=0.1)
    assert head.budget is None and head.key()[6:8] == (None, None) and (head.steps, head.lr) == (50, 0.1)
    assert head.empty_row().scope is None and head.label().endswith("finetune:head steps=50 lr=0.1")
    frozen = Cell(model="m", batch_size=2, phase="finetune", selector="frozen", steps=50, lr=0.1)
    assert frozen.steps is None and frozen.lr is None
    select = Cell(model="m", batch_size=2, phase="select", selector="fps", steps=50, lr=0.1)
    assert select.steps is None and select.lr is None and select.key() == Cell(model="m", batch_size=2,
                                                                               selector="fps").key()
    fps = Cell(model="m", batch_size=2, phase="finetune", selector="fps", budget="k=4")
    assert (fps.steps, fps.lr) == (100, 1e-3) and fps.key()[6:8] == ("k=4", "gps")  # defaults: not in the key


def test_paths_are_resolved_before_cells_leave(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "d.npz").write_bytes(b"")
    (tmp_path / "net.py").write_text("")
    assert axis("weights").parse("w.pt") == str(tmp_path / "w.pt")
    assert axis("weights").parse("pretrained") == "pretrained" and axis("weights").parse("none") is None
    assert axis("data").parse("d.npz:0-4") == f"{tmp_path / 'd.npz'}:0-4"
    assert axis("data").parse("digits:0-4") == "digits:0-4" and axis("data").parse("synthetic") is None
    assert axis("model").parse("net.py:make") == f"{tmp_path / 'net.py'}:make"
    assert axis("model").parse("resnet18") == "resnet18" and axis("model").parse("hf:llama-tiny") == "hf:llama-tiny"
    for bad, what in (("-1", "seed"), ("1.5", "seed"), ("0", "lr"), ("x", "lr"), ("0", "steps")):
        with pytest.raises(Exception) as exc:
            axis(what).parse(bad)
        assert type(exc.value).__name__ == "UserError"


# -- one seed --------------------------------------------------------------------------------------------


def _mask(capsys, tmp_path, name, *argv) -> Mask:
    path = tmp_path / f"{name}.safetensors"
    rc, _, err = run(capsys, "select", *argv, "--out", str(path), "--json")
    assert rc == 0, err
    return Mask.load(path)


def _same(a: Mask, b: Mask) -> bool:
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_the_same_select_command_gives_the_same_mask(tmp_path, capsys):
    magnitude = ("--model", "vit_tiny_patch16_224", "--selector", "magnitude")  # the model's init is the seed's
    assert _same(_mask(capsys, tmp_path, "m1", *magnitude), _mask(capsys, tmp_path, "m2", *magnitude))
    assert not _same(_mask(capsys, tmp_path, "m1", *magnitude), _mask(capsys, tmp_path, "m3", *magnitude, "--seed",
                                                                      "1"))
    fps = ("--model", "test_vit", "--selector", "fps", "--batch-size", "2")
    assert _same(_mask(capsys, tmp_path, "f1", *fps), _mask(capsys, tmp_path, "f2", *fps))
    rand = ("--model", "test_vit", "--selector", "random")
    r0, r1 = _mask(capsys, tmp_path, "r0", *rand), _mask(capsys, tmp_path, "r1", *rand, "--seed", "1")
    assert not _same(r0, r1) and r1.meta["seed"] == "1"
    # random's scores depend on the shapes alone: its own seed option wins over --seed, and equals it
    assert _same(_mask(capsys, tmp_path, "r3", *rand, "-o", "seed=1"), r1)


def test_a_train_mode_selection_draws_its_dropout_from_the_seed(tiny):
    from fps_profile import select

    c = Cell(model=f"{tiny}:dropped", batch_size=16, data="digits:5-9")
    built = build_inputs(c, torch.device("cpu"), torch.float32)

    def gps(seed):
        torch.rand(100)  # the global generator moved on between the calls
        return select(built.model, built.batches, "gps", k=1, loss="ce", seed=seed)

    assert _same(gps(5), gps(5))
    assert not _same(gps(None), gps(None))  # dropout p=0.5 in GPS's train-mode pass: unseeded, it differs


def test_build_inputs_is_the_seeds(tiny):
    def built(seed):
        b = build_inputs(Cell(model=f"{tiny}:make", batch_size=8, data="digits:5-9", seed=seed),
                         torch.device("cpu"), torch.float32)
        return b.model.conv.weight.detach().clone(), b.batches[0]

    (w0, (x0, y0)), (w0b, (x0b, y0b)), (w1, (x1, _)) = built(0), built(0), built(1)
    assert torch.equal(w0, w0b) and torch.equal(x0, x0b) and torch.equal(y0, y0b)
    assert not torch.equal(w0, w1) and not torch.equal(x0, x1)


# -- weights ---------------------------------------------------------------------------------------------


def test_a_weights_file_loads_with_its_provenance_and_changes_fps_mask(tiny, tmp_path, capsys):
    from test_finetune import cell

    torch.manual_seed(7)  # other weights than the seed-0 init, with a 10-way head the 5 classes do not fit
    model = build_inputs(Cell(model=f"{tiny}:make", batch_size=2, seed=7), torch.device("cpu"), torch.float32).model
    with torch.no_grad():
        model.conv.weight.mul_(torch.linspace(0.1, 3.0, 8)[:, None, None, None])
    path = tmp_path / "pre.pt"
    torch.save(model.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    fps = ("--model", "tinynet.py:make", "--selector", "fps", "--k", "1", "--data", "digits:5-9", "--batch-size", "16")
    plain, loaded = _mask(capsys, tmp_path, "plain", *fps), _mask(capsys, tmp_path, "loaded", *fps, "--weights",
                                                                  "pre.pt")
    assert not _same(plain, loaded)
    assert loaded.meta["weights_sha256"] == sha and loaded.meta["weights_reinitialized"] == "head.weight,head.bias"
    assert loaded.meta["weights_source"] == str(path) and loaded.meta["data_classes"] == "5,6,7,8,9"
    row = measure(cell(tiny, "fps", weights=str(path), steps=2))
    assert row.status == "ok", row.error
    assert row.env["weights"] == {"source": str(path), "sha256": sha, "reinitialized": ["head.weight", "head.bias"]}


# -- every phase, and bad paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "sim:cpu"])
def test_a_file_factory_runs_through_every_phase(tiny, device):
    for phase, selector in (("select", "fps"), ("inference", None), ("train_floor", None), ("train_step", "fps"),
                            ("train_step", None), ("finetune", "fps"), ("finetune", "frozen")):
        row = measure(Cell(model=f"{tiny}:make", batch_size=4, phase=phase, selector=selector, device=device,
                           data="digits:5-9", steps=2))
        assert row.status == "ok" and row.peak_allocated_bytes > 0, (phase, selector, row.error)


@pytest.mark.parametrize("argv,expected", [
    (("--model", "missing.py:make"), "file 'missing.py' does not exist"),
    (("--model", "tinynet.py:nope"), "has no attribute 'nope'"),
    (("--weights", "missing.pt"), "no such file"),
    (("--weights", "tinynet.py"), "unknown format '.py'"),
    (("--data", "missing.npz"), "no such file or directory"),
    (("--data", "notes.txt"), "is text; model"),
])
@pytest.mark.parametrize("command", ["select", "sweep"])
def test_bad_sources_end_in_one_line_before_anything_runs(tiny, tmp_path, capsys, argv, expected, command):
    (tmp_path / "notes.txt").write_text("some text\n")
    args = {"--model": "tinynet.py:make", **dict(zip(argv[::2], argv[1::2]))}
    extra = ("--phase", "finetune", "--out", str(tmp_path / "r.jsonl"), "--no-progress") if command == "sweep" else ()
    line = one_line_error(capsys, command, *(x for kv in args.items() for x in kv), *extra)
    assert expected in line, line
    assert not (tmp_path / "r.jsonl").exists()


def test_a_finetune_sweep_writes_rows_and_repeats_them(tiny, tmp_path, capsys):
    common = ("sweep", "--phase", "finetune", "--model", "tinynet.py:make", "--data", "digits:5-9", "--batch-size",
              "32", "--steps", "20", "--lr", "0.01", "--selector", "fps,random", "--k", "1", "--no-progress")
    rc, _, err = run(capsys, *common, "--seed", "0,1", "--out", "a.jsonl")
    assert rc == 0, err
    rows = read_results(tmp_path / "a.jsonl")
    assert len(rows) == 2 * (2 + 3) and all(r.status == "ok" and r.eval_accuracy is not None for r in rows)
    assert {r.variant or "full" for r in rows} == {"fps", "random", "full", "head", "frozen"}
    rc, _, err = run(capsys, *common, "--seed", "1", "--out", "b.jsonl")
    assert rc == 0, err
    again = {r.key(): r for r in read_results(tmp_path / "b.jsonl")}
    assert len(again) == 5
    for r in rows:
        if r.key() in again:
            assert (r.eval_accuracy, r.eval_loss) == (again[r.key()].eval_accuracy, again[r.key()].eval_loss)
    assert json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["seed"] in (0, 1)
