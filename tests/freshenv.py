"""A fresh virtualenv for install tests, made without downloading anything.

``python -m venv`` gives it its own site-packages (pip and setuptools only); a ``.pth`` file then
adds the site-packages that holds this interpreter's torch, so torch, timm and friends need no
download (``.pth`` path lines are only appended to ``sys.path``: that directory's own ``.pth``
files, e.g. an editable install of fps-profile, are not run). What a test installs into the venv
(``pip install --no-deps``) comes first on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def dependencies_dir() -> Path:
    """The site-packages directory this interpreter imports torch from."""
    import torch

    return Path(torch.__file__).resolve().parents[1]


def make_venv(path: Path) -> Path:
    """A new virtualenv at ``path`` seeing the installed dependencies; returns its ``bin`` directory."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True)
    site = next(path.glob("lib/python*/site-packages"))
    (site / "zz_dependencies.pth").write_text(f"{dependencies_dir()}\n")
    return path / "bin"


def pip_install(bin_dir: Path, *args: str) -> None:
    """``pip install --no-deps --no-index --no-build-isolation ARGS`` into the venv (offline: local paths
    only). A source tree is built with the setuptools installed beside torch (``PYTHONPATH``), not the
    venv's bundled one, which may predate built-in wheel building."""
    env = {**os.environ, "PYTHONPATH": str(dependencies_dir())}
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                           "--no-build-isolation", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def venv_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell in the venv: its ``bin`` first on ``PATH``, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return {**env, **extra}
