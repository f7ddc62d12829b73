"""Results files: JSON lines of :class:`~fps_profile.rows.result.Result` rows.

Appending is crash-safe: each row is written with a single ``write`` and ``fsync``; a
reader ignores (and the next append trims) a torn last line. When a file holds several
rows of one cell (a resumed or retried sweep), the newest wins (:func:`latest`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from fps_profile.errors import UserError
from fps_profile.rows.fit import judge
from fps_profile.rows.result import SCHEMA, Result


def _trim_torn_tail(path: Path) -> None:
    """Drop a last line that lacks its newline (a write cut short by a kill)."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        f.seek(size - block)
        tail = f.read(block)
        cut = tail.rfind(b"\n")
        f.truncate(size - block + cut + 1 if cut >= 0 else 0)


def append_result(path: str | os.PathLike, result: Result) -> None:
    """Append one row durably (single write, then fsync)."""
    path = Path(path)
    line = (result.to_json() + "\n").encode()
    try:
        if path.exists():
            _trim_torn_tail(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write results to {str(path)!r}: {exc.strerror or exc}") from exc


def read_results(path: str | os.PathLike, *, missing_ok: bool = False) -> list[Result]:
    """Every row of a results file.

    Raises:
        UserError: Missing file (unless ``missing_ok``), a malformed line, or a
            row of another schema.
    """
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return []
        raise UserError(f"results file {str(path)!r} does not exist")
    if path.is_dir():
        raise UserError(f"{str(path)!r} is a directory, not a results file")
    rows = []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    # The last element is b"" after a final newline, or a torn line cut short by a kill: skip it.
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            schema = obj.get("schema")
            if schema != SCHEMA:
                raise UserError(
                    f"{str(path)}:{number}: row of schema {schema!r}, expected {SCHEMA!r} "
                    "(a results file from another tool or version)"
                )
            rows.append(judge(Result.from_dict(obj)))  # an ok row above its device's memory is an oom
        except UserError:
            raise
        except (ValueError, TypeError) as exc:
            raise UserError(f"{str(path)}:{number}: not a valid results row ({exc})") from None
    return rows


def latest(rows: Sequence[Result]) -> dict[tuple, Result]:
    """Rows by cell key; a later row of the same key replaces an earlier one."""
    return {r.key(): r for r in rows}


def check_output(path: Path) -> list[Result]:
    """Existing rows of ``path`` (validated) after checking it can be appended to.

    Raises:
        UserError: ``path`` is a directory, its directory is missing, or it cannot be written.
    """
    if path.is_dir():
        raise UserError(f"output {str(path)!r} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output directory {str(parent)!r} does not exist")
    rows = read_results(path, missing_ok=True)
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise UserError(f"cannot write results to {str(path)!r}: permission denied")
    return rows
