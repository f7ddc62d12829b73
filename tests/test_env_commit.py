"""A row's ``git_commit`` is ``+dirty`` only where the code that measures changed (issue: rows appended to a
tracked results file were all ``+dirty``, the file itself being a change)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fps_profile.measure.env import commit_of

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_only_code_changes_make_a_commit_dirty(tmp_path):
    assert commit_of(tmp_path) is None  # not a checkout
    (tmp_path / "fps_profile").mkdir()
    (tmp_path / "fps_profile" / "a.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.jsonl").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert commit_of(tmp_path) == head

    with (tmp_path / "results" / "r.jsonl").open("a") as f:  # a sweep appending its rows
        f.write("{}\n")
    (tmp_path / "README.md").write_text("notes\n")
    assert commit_of(tmp_path) == head

    (tmp_path / "fps_profile" / "b.py").write_text("y = 2\n")  # a new module counts
    assert commit_of(tmp_path) == head + "+dirty"
    (tmp_path / "fps_profile" / "b.py").unlink()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert commit_of(tmp_path) == head + "+dirty"
