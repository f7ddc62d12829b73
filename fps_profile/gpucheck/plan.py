"""What the GPU check needs and measures: dependencies, the environment, and the grid.

The grid is the same on every device (``cuda``, ``cpu`` for the dry run, ``sim:<card>``):
per dtype and model list, the inference floor, FPS's selection, a full and an FPS-sparse
fine-tuning step; GPS as published (two views, SupCon); GPS with cross-entropy on one
view. Cells run one at a time in fresh processes, as a sweep runs them, until a deadline.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Distribution -> the module it provides, where the names differ.
MODULES = {"nvidia-ml-py": "pynvml", "pytest": "pytest"}
GPS_CE = {"loss": "ce", "views": 1}


def requirements() -> list[str]:
    """The package's dependencies (``pyproject.toml``) and pytest, for the tests."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"]) + ["pytest>=7"]


def check_requirements(reqs: Sequence[str]) -> list[str]:
    """One line per requirement that is missing or of another version; empty when all are met."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no packaging: check presence only
        Requirement = None
    problems = []
    for text in reqs:
        name = re.split(r"[<>=!~ \[;]", text, maxsplit=1)[0]
        module = MODULES.get(name, name.replace("-", "_"))
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = None
        if version is None and importlib.util.find_spec(module) is None:
            problems.append(f"missing: {name} (import {module}); needed: {text}")
        elif version is not None and Requirement is not None and not Requirement(text).specifier.contains(
                version, prereleases=True):
            problems.append(f"version: {name} {version} does not satisfy {text}")
    return problems


def environment(device: str, problems: Sequence[str]) -> dict:
    """The environment of the check: the rows' ``env`` plus the GPU's properties and the check's findings."""
    import torch

    from fps_profile.measure import env

    out = env.collect(device) | {"python_executable": sys.executable, "platform": platform.platform(),
                                 "requirements": problems or "all met"}
    out["packages"] = {}
    for name in ("torch", "timm", "nvidia-ml-py", "safetensors", "matplotlib", "tqdm", "pytest", "numpy"):
        try:
            out["packages"][name] = md.version(name)
        except md.PackageNotFoundError:
            out["packages"][name] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                      "max_threads_per_sm": p.max_threads_per_multi_processor, "memory_bytes": p.total_memory}
    return out


def sim_target(device: str) -> str:
    """The sim target that predicts ``device``: ``sim:cpu`` for the CPU, ``sim:<card>`` for a CUDA GPU."""
    if device == "cpu":
        return "sim:cpu"
    import torch

    from fps_profile.measure.targets import DEFAULT_TARGET, target_for_device_name

    target = target_for_device_name(torch.cuda.get_device_name(0))
    if target is None:
        print(f"gpu-check: no sim target for {torch.cuda.get_device_name(0)!r}; comparing with "
              f"sim:{DEFAULT_TARGET}", file=sys.stderr)
    return f"sim:{target.name if target else DEFAULT_TARGET}"


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """``"float32:m1,m2 bfloat16:m1"`` -> ``[("float32", ["m1", "m2"]), ("bfloat16", ["m1"])]``."""
    out = []
    for part in text.split():
        dtype, sep, models = part.partition(":")
        if not sep or not models:
            raise ValueError(f"grid part must look like dtype:model,model, not {part!r}")
        out.append((dtype, models.split(",")))
    return out


def grids(device: str, grid: Sequence[tuple[str, list[str]]], batches: Sequence[int], repeats: int = 3):
    """The sweeps of the check, in the order they run (float32 first when it comes first)."""
    from fps_profile.run.grid import Grid

    for dtype, models in grid:
        common = dict(models=list(models), batch_sizes=list(batches), dtypes=[dtype], devices=[device],
                      repeats=repeats)
        yield Grid(selectors=["fps"], phases=["inference", "select", "train_step"], **common)
        yield Grid(selectors=["gps"], phases=["select"], **common)
        yield Grid(selectors=["gps"], phases=["select"], options={"gps": dict(GPS_CE)}, **common)


class DeadlineExecutor:
    """The local executor, starting no cell past ``deadline`` (``time.monotonic``); a cell in flight finishes.

    With ``part=(k, n)`` it measures only every n-th cell it is handed, from the k-th on
    (counted over all its calls), so n processes can share a grid.
    """

    name = "local"

    def __init__(self, deadline: float, part: tuple[int, int] = (0, 1)) -> None:
        self.deadline, self.part, self._seen = deadline, part, 0

    def run(self, cells, timeout_s) -> Iterator:
        from fps_profile.run.isolation import run_isolated

        for cell in cells:
            mine = self._seen % self.part[1] == self.part[0]
            self._seen += 1
            if not mine:
                continue
            if time.monotonic() >= self.deadline:
                return
            yield run_isolated(cell, timeout_s)


def measure(device: str, grid, batches, out: Path, seconds: float, repeats: int = 3,
            part: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """Run every sweep of the check (or its ``part``) into ``out``, starting no cell once ``seconds`` have passed.

    Returns:
        Rows in ``out`` and cells planned (all parts).
    """
    from fps_profile.rows.store import read_results
    from fps_profile.run.sweep import run_sweep

    executor = DeadlineExecutor(time.monotonic() + seconds, part)
    planned = 0
    for g in grids(device, grid, batches, repeats):
        planned += len(g.cells())
        if time.monotonic() < executor.deadline:
            run_sweep(g, out, executor=executor, timeout_s=180.0, progress=True)
    rows = len({r.key() for r in read_results(out, missing_ok=True)})
    share = f" (part {part[0] + 1} of {part[1]})" if part[1] > 1 else ""
    print(f"gpu-check: {device}{share}: {rows} of {planned} cells measured", file=sys.stderr)
    return rows, planned
