"""Checked before anything runs (one line, exit 2, nothing written), and every command takes the
models and devices a sweep takes: hf: configs, output paths, selector options, plugins, select on
the sim, scope of a language model, explain's schema-driven --cell keys, rows whose figures are
not numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fps_profile
from fps_profile.cli import main
from fps_profile.errors import SelectorError, UserError
from fps_profile.rows.result import Result
from fps_profile.selection.selectors import SELECTORS, Selector, register
from plotrows import write_results

MODEL = "test_vit"


def one_line_error(capsys, *argv) -> str:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("fps-profile: error: "), err
    return err.strip()


def _rows_file(path, **fields):
    write_results(path, [Result(selector="fps", model=MODEL, batch_size=1, dtype="float32", device="cpu",
                                phase="select", budget="k=1", peak_allocated_bytes=1000, **fields)])
    return str(path)


# -- values checked before anything runs ---------------------------------------------------------------

def test_hf_config_with_an_unknown_model_type_fails_before_measuring(tmp_path, capsys):
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({"model_type": "lama", "hidden_size": 64}))
    out = tmp_path / "r.jsonl"
    line = one_line_error(capsys, "sweep", "--no-progress", "--model", f"hf:{config}", "--out", str(out))
    assert "unknown model_type 'lama'; did you mean 'llama'" in line
    assert len(line) < 400  # not transformers' list of every model type
    assert not out.exists()
    line = one_line_error(capsys, "select", "--model", f"hf:{config}")
    assert "unknown model_type 'lama'" in line


def test_sequence_longer_than_the_config_allows(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    line = one_line_error(capsys, "sweep", "--no-progress", "--model", "hf:llama-tiny", "--seq-len", "5000",
                          "--out", str(out))
    assert "sequence length 5000 is longer than 'hf:llama-tiny' allows (4096 positions)" in line
    assert not out.exists()
    line = one_line_error(capsys, "select", "--model", "hf:llama-tiny", "--seq-len", "5000")
    assert "sequence length 5000 is longer than 'hf:llama-tiny' allows" in line
    line = one_line_error(capsys, "select", "--model", MODEL, "--seq-len", "64")
    assert "--seq-len applies to language models (hf:...), not to image model 'test_vit'" in line


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "--no-progress", "--model", MODEL, "--out", "{tmp}/r.jsonl", "--plots", "{file}/figs"],
     "cannot write figures into"),
    (["plot", "{rows}", "--out", "{file}/figs"], "cannot write figures into"),
    (["report", "{rows}", "--out", "{tmp}/missing/report.md"], "folder '{tmp}/missing' does not exist"),
    (["report", "{rows}", "--out", "{tmp}/r.md", "--figures", "{file}/figs"], "cannot write figures into"),
    (["frontier", "{rows}", "--out", "{file}/f"], "cannot write figures and frontier.md into"),
    (["gate", "{rows}", "{rows}", "--out", "{file}/summary.md"], "cannot write report"),
    (["select", "--model", MODEL, "--out", "{file}/m.safetensors"], "cannot write mask"),
])
def test_outputs_that_cannot_be_written_fail_first(tmp_path, capsys, argv, needle):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    rows = _rows_file(tmp_path / "rows.jsonl")
    fill = {"tmp": str(tmp_path), "file": str(a_file), "rows": rows}
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_line_error(capsys, *(a.format(**fill) for a in argv))
    assert needle.format(**fill) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing measured


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_plots_folder_fails_before_the_sweep(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = one_line_error(capsys, "sweep", "--no-progress", "--model", MODEL, "--out", str(tmp_path / "r.jsonl"),
                              "--plots", str(locked / "figs"))
    finally:
        locked.chmod(0o700)
    assert "cannot write figures into" in line and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("argv, needle", [
    (["sweep", "--selector", "random", "-o", "random:seed=abc"], "option seed must be an integer (its default is 0)"),
    (["sweep", "--selector", "gps", "-o", "gps:views=1.5"], "option views must be an integer"),
    (["sweep", "--selector", "gps", "-o", "gps:amp=maybe"], "option amp must be true or false"),
    (["sweep", "--selector", "gd-fps", "-o", "gd-fps:eps=abc"], "eps must be a number"),
    (["select", "--selector", "random", "-o", "seed=abc"], "option seed must be an integer"),
])
def test_option_values_are_checked_against_their_defaults(tmp_path, capsys, argv, needle):
    out = tmp_path / "r.jsonl"
    extra = ["--no-progress", "--out", str(out)] if argv[0] == "sweep" else []
    line = one_line_error(capsys, *argv, "--model", MODEL, *extra)
    assert needle in line and not out.exists()


def test_option_value_conversions():
    from fps_profile.selection.selectors.registry import option_value

    assert option_value("s", "n", "3", 0) == 3 and option_value("s", "x", 2, 0.5) == 2.0
    assert option_value("s", "b", "on", False) is True and option_value("s", "b", "false", True) is False
    assert option_value("s", "t", 1, "ce") == "1" and option_value("s", "a", object, None) is object
    for value, default in (("abc", 0), (1.5, 0), (True, 0), ("x", 0.1), ("maybe", False), (True, "ce")):
        with pytest.raises(UserError, match="option"):
            option_value("s", "k", value, default)
    # an accepted value reaches the selector as its default's type
    assert fps_profile.selection.selectors.create("random", seed="7").seed == 7


# -- plugins -----------------------------------------------------------------------------------------

class _Raises(Selector):
    """Raises where it is told to."""

    def __init__(self, *, where: str = "score"):
        self.where = where

    def prepare(self, model, batches, targets):
        if self.where == "prepare":
            {}["missing statistic"]
        if self.where == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")

    def score(self, target):
        if target.name.endswith("fc1.weight"):
            raise ValueError(f"no score for {target.name}\nsecond line")
        return target.param.detach().abs()


@pytest.fixture
def raising():
    register("raises-test")(_Raises)
    yield "raises-test"
    SELECTORS.unregister("raises-test")


def test_a_selector_that_raises_is_one_line_naming_it_the_tensor_and_the_exception(capsys, raising):
    line = one_line_error(capsys, "select", "--model", MODEL, "--batch-size", "1", "--selector", raising)
    assert line == ("fps-profile: error: selector 'raises-test' failed in score of 'blocks.0.mlp.fc1.weight': "
                    "ValueError: no score for blocks.0.mlp.fc1.weight (fps-profile --debug ... shows its traceback)")
    line = one_line_error(capsys, "select", "--model", MODEL, "--batch-size", "1", "--selector", raising,
                          "-o", "where=prepare")
    assert "selector 'raises-test' failed in prepare: KeyError: 'missing statistic'" in line


def test_debug_shows_the_selectors_traceback_with_file_and_line(capsys, raising):
    import traceback

    with pytest.raises(SelectorError) as info:
        main(["--debug", "select", "--model", MODEL, "--batch-size", "1", "--selector", raising])
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    frames = traceback.extract_tb(cause.__traceback__)
    assert frames[-1].filename == __file__ and frames[-1].name == "score"


def test_out_of_memory_in_a_selector_is_not_renamed(tiny_vit, batches, raising):
    with pytest.raises(torch.OutOfMemoryError):
        fps_profile.select(tiny_vit, batches, raising, k=1, where="oom")


def test_one_broken_plugin_does_not_stop_list(tmp_path):
    site = tmp_path / "site"
    (site / "ok_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "ok_plugin.py").write_text(textwrap.dedent('''
        from fps_profile.selection.selectors.base import Selector

        class Fine(Selector):
            """A plugin that loads."""
            needs_data = False
            def score(self, target):
                return target.param.detach().abs()
    '''))
    dist = site / "ok_plugin-0.1.dist-info"
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ok-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[fps_profile.selectors]\nfine = ok_plugin:Fine\nbroken = no_such_module_anywhere:Broken\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "fps_profile", "list"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert {"fps", "gps", "fine", "broken"} <= set(names)
    assert "A plugin that loads." in names["fine"]
    assert "broken" in names["broken"].split()[1] and "no_such_module_anywhere" in names["broken"]
    assert "1 selector plugin(s) failed to load" in proc.stderr


def test_readme_plugin_example_runs_from_the_cli(capsys):
    """The README's 'Writing a selector' example, registered, through 'select' with the scope it names."""
    from test_readme import _block_after

    code = _block_after("## Writing a selector")
    registration = code[:code.index("mask = fps_profile.select")]
    exec(compile(registration, "README.md", "exec"), {})
    try:
        rc = main(["select", "--selector", "l2-act", "--scope", "linear", "-o", "eps=1e-6", "--model", MODEL,
                   "--batch-size", "2", "--json"])
        out = capsys.readouterr().out
        assert rc == 0
        stats = json.loads(out)["stats"]
        per = {t["name"]: t["trainable"] for t in stats["tensors"]}
        assert per["patch_embed.proj.weight"] == 0 and per["blocks.0.mlp.fc1.weight"] > 0
        # under the gps scope the convolution is ranked too, which this plugin cannot score: one line
        line = one_line_error(capsys, "select", "--selector", "l2-act", "--model", MODEL, "--batch-size", "2")
        assert "selector 'l2-act' failed in score of 'patch_embed.proj.weight'" in line
    finally:
        SELECTORS.unregister("l2-act")
