"""The sweep end to end: complete rows, resume after a kill, OOM/crash/hang as data, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fps_profile.cli import main
from fps_profile.rows.store import read_results

MODEL = "test_vit"  # a small real timm model (6 blocks, width 64, 160 px)


def _sweep(args: list[str], env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fps_profile", "sweep", "--no-progress", *args],
                          capture_output=True, text=True, env=env, **kw)


@pytest.fixture
def plugin_env(tmp_path):
    """PYTHONPATH with an installed-looking plugin: selectors 'crash' (dies) and 'hang' (sleeps)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "crashy_plugin.py").write_text(textwrap.dedent('''
        import os, time
        from fps_profile.selection.selectors.base import Selector

        class Crash(Selector):
            """Dies in the middle of a measurement."""
            def prepare(self, model, batches, targets):
                os._exit(3)

        class Hang(Selector):
            """Never finishes."""
            def prepare(self, model, batches, targets):
                time.sleep(600)
    '''))
    dist = site / "crashy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[fps_profile.selectors]\ncrash = crashy_plugin:Crash\nhang = crashy_plugin:Hang\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.slow
def test_cpu_sweep_four_selectors_vit_tiny(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = _sweep(["--selector", "fps,gps,magnitude,random", "--model", "vit_tiny_patch16_224",
                   "--batch-size", "8", "--phase", "inference,select", "--repeats", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = read_results(out)
    assert len(rows) == 1 + 4
    assert all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"]
    for r in rows:
        assert r.peak_allocated_bytes > 0 and r.rss_peak_bytes > 0
        assert len(r.wall_times_s) == 2 and r.wall_time_s > 0
        assert r.env["torch"] and r.env["timm"] and r.env["host"]
    by = {(r.batch_size, r.phase, r.selector): r for r in rows}
    floor = by[8, "inference", None].peak_allocated_bytes
    fps = by[8, "select", "fps"].peak_allocated_bytes
    gps = by[8, "select", "gps"].peak_allocated_bytes
    mask_bytes = by[8, "select", "fps"].params_total  # one bool per parameter
    assert fps <= min(1.02 * (floor + mask_bytes), 1.05 * floor)
    assert gps >= 3 * fps
    assert "| floor" in proc.stdout and "peak/gps" in proc.stdout


def test_kill_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--selector", "fps,magnitude", "--model", MODEL, "--batch-size", "1,2",
            "--phase", "inference,select", "--repeats", "1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "fps_profile", "sweep", "--no-progress", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its fork server and the worker in flight
    finally:
        proc.wait()
    partial = read_results(out)
    assert 2 <= len(partial) < 6
    done = _sweep(args)
    assert done.returncode == 0, done.stderr
    rows = read_results(out)
    keys = [r.key() for r in rows]
    assert len(keys) == len(set(keys)) == 6
    assert [r.key() for r in rows[:len(partial)]] == [r.key() for r in partial]  # nothing rewritten


def test_memory_budget_oom_is_recorded_and_sweep_goes_on(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = _sweep(["--selector", "fps,gps", "--model", MODEL, "--batch-size", "2", "--phase", "inference,select",
                   "--repeats", "1", "--memory-budget", "4MiB", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = {(r.phase, r.selector): r for r in read_results(out)}
    assert len(rows) == 3
    assert rows["select", "gps"].status == "oom"
    assert "budget" in rows["select", "gps"].error
    assert rows["inference", None].status == "ok"
    assert rows["inference", None].peak_allocated_bytes <= 4 * 2**20
    assert "OOM" in proc.stdout


def test_crashed_and_hung_workers_become_rows(tmp_path, plugin_env):
    out = tmp_path / "r.jsonl"
    proc = _sweep(["--selector", "crash,hang,magnitude", "--model", MODEL, "--batch-size", "1",
                   "--phase", "select", "--repeats", "1", "--timeout", "20", "--out", str(out)], env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    rows = {r.selector: r for r in read_results(out)}
    assert rows["crash"].status == "error" and "status 3" in rows["crash"].error
    assert rows["hang"].status == "timeout" and "20 s" in rows["hang"].error
    assert rows["magnitude"].status == "ok"
    # --retry-failed measures them again; without it they are skipped
    again = _sweep(["--selector", "crash", "--model", MODEL, "--batch-size", "1", "--phase", "select",
                    "--repeats", "1", "--out", str(out)], env=plugin_env)
    assert again.returncode == 0 and len(read_results(out)) == 3
    retried = _sweep(["--selector", "crash", "--model", MODEL, "--batch-size", "1", "--phase", "select",
                      "--repeats", "1", "--retry-failed", "--out", str(out)], env=plugin_env)
    assert retried.returncode == 0 and len(read_results(out)) == 4


def test_max_batch_bisects_to_the_budget_once_per_knob_setting(tmp_path, capsys):
    """Each search closes its gap by bisection; --checkpointing off,on: a search per setting for GPS
    (checkpointing fits more), one for FPS (nothing to checkpoint)."""
    out = tmp_path / "r.jsonl"
    rc = main(["sweep", "--no-progress", "--max-batch", "--memory-budget", "12MiB", "--selector", "fps,gps",
               "--model", MODEL, "--phase", "select", "--batch-size", "1", "--repeats", "1",
               "--checkpointing", "off,on", "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    lines = [line.split("|") for line in table.splitlines()[2:]]
    assert [cols[4].strip() for cols in lines] == ["fps", "gps", "gps +ckpt"]
    rows = read_results(out)
    assert not any(r.checkpointing for r in rows if r.selector == "fps")
    best = {}
    for sel, ckpt in (("fps", False), ("gps", False), ("gps", True)):
        mine = [r for r in rows if r.selector == sel and bool(r.checkpointing) is ckpt]
        fits = [r.batch_size for r in mine if r.status == "ok" and r.peak_allocated_bytes <= 12 * 2**20]
        fails = [r.batch_size for r in mine if r.status == "oom"]
        best[sel, ckpt] = max(fits)
        assert min(fails) == best[sel, ckpt] + 1  # bisection closed the gap
    searches = (("fps", False), ("gps", False), ("gps", True))
    assert [cols[5].strip() for cols in lines] == [str(best[k]) for k in searches]
    assert best["gps", False] < best["fps", False]
    assert best["gps", True] >= best["gps", False]


@pytest.mark.parametrize("args, message", [
    (["--model", "vit_tiny_patch16"], "did you mean 'vit_tiny_patch16_"),
    (["--selector", "fsp"], "did you mean 'fps'"),
    (["--batch-size", "0"], "batch size must be an integer >= 1"),
    (["--batch-size", "two"], "batch size must be an integer >= 1"),
    (["--dtype", "float64"], "unknown dtype 'float64'"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--device", "tpu"], "device"),
    (["--phase", "selekt"], "did you mean 'select'"),
    (["--memory-budget", "lots"], "not a memory size"),
])
def test_bad_input_fails_before_measuring(tmp_path, capsys, args, message):
    if args == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    out = tmp_path / "r.jsonl"
    rc = main(["sweep", "--no-progress", "--model", MODEL, "--batch-size", "1", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert err.startswith("fps-profile: error:") and err.count("\n") == 1
    assert not out.exists()


def test_bad_outputs(tmp_path, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"schema": "someone-else/3", "model": "x"}) + "\n")
    for out, message in ((tmp_path / "missing-dir" / "r.jsonl", "does not exist"),
                         (tmp_path, "is a directory"),
                         (other, "another tool or version")):
        rc = main(["sweep", "--no-progress", "--model", MODEL, "--batch-size", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1
    assert other.read_text().count("\n") == 1  # untouched


def test_toml_config_and_flag_override(tmp_path):
    conf = tmp_path / "grid.toml"
    conf.write_text(textwrap.dedent(f'''
        selectors = ["magnitude", "random"]
        models = ["{MODEL}"]
        batch_sizes = [1]
        phases = ["select"]
        repeats = 1
        [options.random]
        seed = 7
    '''))
    out = tmp_path / "r.jsonl"
    proc = _sweep(["--config", str(conf), "--selector", "random", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    rows = read_results(out)
    assert [(r.phase, r.selector, r.batch_size) for r in rows] == [("select", "random", 1)]
    bad = tmp_path / "bad.toml"
    bad.write_text("selectors = [\n")
    proc = _sweep(["--config", str(bad), "--out", str(out)])
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_train_floor_phase_on_sim_with_the_sparse_step_next_to_it():
    from fps_profile.measure.runner import measure
    from fps_profile.analysis.summary import format_summary
    from fps_profile.run.grid import Grid

    grid = Grid(selectors=["fps"], models=[MODEL], batch_sizes=[2], devices=["sim:cpu"],
                phases=["train_step", "train_floor"], warmup=1, repeats=1)
    grid.validate()
    cells = grid.cells()
    assert [(c.phase, c.selector) for c in cells] == [("train_floor", None), ("train_step", None), ("train_step",
                                                                                                    "fps")]
    rows = {(r.phase, r.selector): r for r in map(measure, cells)}
    floor, sparse, full = rows["train_floor", None], rows["train_step", "fps"], rows["train_step", None]
    assert floor.status == "ok" and floor.budget is None and floor.params_trainable == 0
    assert floor.peak_allocated_bytes < sparse.peak_allocated_bytes < full.peak_allocated_bytes
    assert sparse.peak_allocated_bytes <= 1.03 * floor.peak_allocated_bytes + 20 * sparse.params_trainable
    lines = [ln for ln in format_summary(list(rows.values())).splitlines() if "| train:" in ln]
    assert [ln.split("|")[3].strip() for ln in lines] == ["train:floor", "train:full", "train:fps"]
