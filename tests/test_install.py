"""Install as a user does, in a fresh virtualenv (tests/freshenv.py: nothing downloaded):

* the wheel ``python -m build`` makes holds the package and its data (the ``hf:`` configs) and, installed
  into a fresh virtualenv, runs ``fps-profile list`` and ``fps-profile list models 'hf:*'``;
* ``fps-profile init-ci``'s memory gate, run as its workflow runs it, in a fresh git repository holding a
  toy selector package installed with an entry point in ``fps_profile.selectors``: an unchanged tree
  passes, a planted +10% memory regression fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from freshenv import dependencies_dir, make_venv, pip_install, venv_env

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (ROOT / "fps_profile" / "models" / "configs").glob("*.json"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``python -m build --wheel`` makes of a copy of this source tree (so the build's own
    ``build/`` and ``*.egg-info`` stay out of the checkout). ``--no-isolation`` builds with the
    setuptools installed beside torch (the test extra's) instead of downloading one; ``build``
    still checks it against ``[build-system] requires``."""
    pytest.importorskip("build")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".asv", "build", "dist", "*.egg-info", "__pycache__", "results", "plots", ".pytest_cache"))
    env = {**os.environ, "PYTHONPATH": str(dependencies_dir())}
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (found,) = out.glob("fps_profile-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtualenv with the wheel installed (``--no-deps``: torch and friends come from the
    installed ones); returns its ``bin`` directory."""
    bin_dir = make_venv(tmp_path_factory.mktemp("venv") / "env")
    pip_install(bin_dir, str(wheel))
    return bin_dir


def _run(bin_dir: Path, *argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, env=venv_env(bin_dir, **env), capture_output=True, text=True,
                          timeout=900)


def test_wheel_holds_the_package_and_its_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("fps_profile/models/configs/")) == CONFIGS
    assert "fps_profile/cli/init_ci_cmd.py" in names and "fps_profile/integrations/peft_step.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "results/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fps-profile = fps_profile.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_runs_the_list_commands(venv, tmp_path):
    where = _run(venv, str(venv / "python"), "-c", "import fps_profile; print(fps_profile.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv.parent)  # the installed copy, not this checkout
    listed = _run(venv, "fps-profile", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {"fps", "gps", "magnitude", "random"} <= {line.split()[0] for line in listed.stdout.splitlines()}
    models = _run(venv, "fps-profile", "list", "models", "hf:*", cwd=tmp_path)
    assert models.returncode == 0, models.stderr
    assert sorted(line.split()[0] for line in models.stdout.splitlines()) == sorted(
        "hf:" + c.removesuffix(".json") for c in CONFIGS)


TOY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "toy-selector"
version = "0.0.1"

[project.entry-points."fps_profile.selectors"]
toy = "toy_selector:Toy"

[tool.setuptools]
packages = ["toy_selector"]
"""

TOY_SELECTOR = """\
'''A toy selector: magnitude scores, and a scratch buffer of REGRESSION x the model's parameter
bytes held from prepare to release (0: none).'''
import torch
from fps_profile import Selector

REGRESSION = 0.0


class Toy(Selector):
    needs_data = False

    def prepare(self, model, batches, targets):
        n = int(REGRESSION * sum(p.numel() * p.element_size() for p in model.parameters()))
        self.scratch = torch.empty(n, dtype=torch.uint8, device=next(model.parameters()).device) if n else None

    def score(self, target):
        return target.param.detach().abs()

    def release(self):
        self.scratch = None
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def _gate_step(repo: Path) -> str:
    """The ``run`` command of the workflow's gate step, read from the written workflow."""
    yaml = pytest.importorskip("yaml")
    from fps_profile.cli.ci_files import GATE_STEP, WORKFLOW

    workflow = yaml.safe_load((repo / WORKFLOW).read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    (job,) = workflow["jobs"].values()
    return next(step["run"] for step in job["steps"] if step.get("name") == GATE_STEP)


def test_init_ci_gate_passes_an_unchanged_tree_and_fails_a_planted_memory_regression(venv, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "toy_selector").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(TOY_PYPROJECT)
    source = repo / "toy_selector" / "__init__.py"
    source.write_text(TOY_SELECTOR)
    _git(repo, "init", "-q")
    pip_install(venv, "-e", str(repo))  # the workflow's install step, offline
    init = _run(venv, "fps-profile", "init-ci", "--selector", "toy", "--batch-size", "1,4", cwd=repo)
    assert init.returncode == 0, init.stderr
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "toy selector and its memory gate")
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                          text=True).stdout == ""  # init-ci left nothing uncommitted behind
    step = _gate_step(repo)

    summary = tmp_path / "summary.md"
    unchanged = _run(venv, "bash", "-c", step, cwd=repo, GITHUB_STEP_SUMMARY=str(summary))
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "gate: PASS" in summary.read_text() and "WORSE" not in summary.read_text()

    source.write_text(TOY_SELECTOR.replace("REGRESSION = 0.0", "REGRESSION = 0.1"))  # the planted regression
    _git(repo, "commit", "-qam", "a selector that holds 10% more")
    summary.unlink()
    regressed = _run(venv, "bash", "-c", step, cwd=repo, GITHUB_STEP_SUMMARY=str(summary))
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    report = summary.read_text()
    assert "gate: FAIL" in report
    worse = [line for line in report.splitlines() if "peak_allocated_bytes" in line and "WORSE" in line]
    assert len(worse) == 2  # both batch sizes' selection peaks
    # The scratch is 10% of the weights' bytes, and the peak holds the weights and more: at most +10%.
    ratios = [float(line.split("|")[5]) for line in worse]
    assert all(1.0 < r <= 1.1 for r in ratios), ratios
