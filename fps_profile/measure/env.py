"""The environment a measurement ran in: versions, commit, device, host."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any


#: What a measurement's numbers depend on in a checkout: the package and its requirements. A results
#: file, figure or note being written (tracked files too) leaves a row's commit clean.
CODE_PATHS = ("fps_profile", "pyproject.toml")


@functools.cache
def git_commit() -> str | None:
    """Commit of the fps_profile source tree (with ``+dirty`` if its code changed), if it is a git checkout."""
    return commit_of(Path(__file__).resolve().parents[2])


def commit_of(root: Path) -> str | None:
    """``HEAD`` of the git checkout at ``root``, plus ``+dirty`` where :data:`CODE_PATHS` hold changes
    or new files git does not ignore; None outside a checkout or without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *CODE_PATHS],
                               capture_output=True, text=True, timeout=5)
        return commit + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVIDIA driver here: not an error
        return None


def collect(device: str | None = None) -> dict[str, Any]:
    """Versions and hardware for a row's ``env`` field (with ``device``'s own facts from its backend)."""
    import os

    import timm
    import torch

    import fps_profile

    env: dict[str, Any] = {
        "fps_profile": fps_profile.__version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None:
        from fps_profile.measure.backends import backend_for

        env.update(backend_for(device).env(device))
    return env
