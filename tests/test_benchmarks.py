"""The asv benchmarks: well-formed, wrapping real names, and accepted by ``asv check``."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULES = ["benchmark_memory", "benchmark_flops", "benchmark_select", "benchmark_overhead"]


def _benchmark_classes():
    for name in MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == module.__name__:
                yield obj


def test_asv_config_points_at_the_benchmarks():
    from asv.util import load_json

    conf = load_json(str(ROOT / "asv.conf.json"), js_comments=True)
    assert conf["environment_type"] == "virtualenv" and conf["branches"] == ["main"]
    assert (ROOT / conf["benchmark_dir"] / "__init__.py").is_file()
    for key in ("results_dir", "html_dir", "env_dir"):
        ignored = subprocess.run(["git", "check-ignore", "-q", conf[key]], cwd=ROOT)
        assert ignored.returncode == 0, f"asv's {key} must be ignored by git"


def test_params_match_param_names_and_units():
    classes = list(_benchmark_classes())
    assert {c.__name__ for c in classes} >= {"SimPeakMemory", "CudaPeakMemory", "SimFlops", "TimeSelect",
                                             "PeakMemSelect", "HarnessOverhead"}
    for cls in classes:
        params = getattr(cls, "params", None)
        if params is None:
            continue
        grid = params if isinstance(params, tuple) else (params,)
        assert len(grid) == len(cls.param_names), cls.__name__
        methods = [m for m in vars(cls) if m.startswith(("track_", "time_", "peakmem_"))]
        assert methods, cls.__name__
        if any(m.startswith("track_") for m in methods):
            assert isinstance(cls.unit, str) and cls.unit
    from benchmarks.benchmark_memory import CudaPeakMemory, SimPeakMemory

    assert SimPeakMemory.unit == CudaPeakMemory.unit == "bytes"


def test_benchmarked_names_exist():
    import timm

    from benchmarks import common
    from fps_profile.selection.selectors import list_selectors

    known = set(list_selectors())
    assert set(common.SELECTORS) <= known and set(common.CPU_SELECTORS) <= known
    for model in common.MODELS + common.CPU_MODELS:
        assert timm.is_model(model), model


def test_cuda_benchmarks_skip_without_a_gpu():
    import torch

    from benchmarks.benchmark_memory import CudaPeakMemory

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(NotImplementedError):
        CudaPeakMemory().setup("fps", "vit_tiny_patch16_224", 1)


def test_select_callable_runs_the_selection():
    from benchmarks.common import select_callable
    from fps_profile.selection.mask import Mask

    mask = select_callable("magnitude", "test_vit", 1)()
    assert isinstance(mask, Mask) and mask.stats().trainable > 0


def test_overhead_helper_returns_both_timings():
    from benchmarks.benchmark_overhead import recorded_and_bare

    recorded, bare = recorded_and_bare("magnitude", "test_vit", rounds=2, repeats=1)
    assert len(recorded) == len(bare) == 2
    assert all(t > 0 for t in recorded + bare)


@pytest.mark.slow
def test_asv_check_passes(tmp_path):
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    if asv is None:
        pytest.skip("asv is not installed")
    proc = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout


def test_docs_name_every_asv_command():
    text = (ROOT / "docs" / "asv.md").read_text()
    for cmd in ("asv machine --yes", "asv run", "asv continuous", "asv compare", "asv publish",
                "asv check --python=same", "fps-profile gate"):
        assert cmd in text, cmd
    json.dumps(text)  # plain text
