"""Argument parsing helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fps_profile.errors import UserError


def parse_bytes(text: str, what: str = "memory size") -> int:
    """``"8GiB"``, ``"500MB"`` -> bytes; a bare number is an error (:func:`fps_profile.units.parse_bytes`)."""
    from fps_profile.units import parse_bytes as parse

    return parse(text, what)


def comma_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def int_list(text: str, what: str = "batch size") -> list[int]:
    out = []
    for part in comma_list(text):
        try:
            value = int(part)
        except ValueError:
            raise UserError(f"{what} must be an integer >= 1, not {part!r}") from None
        if value < 1:
            raise UserError(f"{what} must be an integer >= 1, not {part!r}")
        out.append(value)
    if not out:
        raise UserError(f"no {what} given")
    return out


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}")
    return value


def parse_option(text: str) -> tuple[str, object]:
    """``key=value`` for selector options; values parsed as int, float, bool or str."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserError(f"selector option must look like key=value, not {text!r}")
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    return key, raw


def _cannot_write(folder: Path) -> str | None:
    """Why nothing can be written into the existing ``folder`` (None: it can); tried with a temporary
    file that is gone at once, so a read-only file system or a root-owned folder shows too."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_folder(path, what: str) -> None:
    """Fail now, before any work, unless ``path`` is a folder that can be written or created.

    Nothing is created: a missing folder is made later by whoever writes into it.

    Raises:
        UserError: ``path`` (or a folder above it) is a file, or cannot be written.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {what} into {str(path)!r}: {str(probe)!r} is a file, not a folder")
    reason = _cannot_write(probe)
    if reason:
        raise UserError(f"cannot write {what} into {str(path)!r}: {reason}")


def check_file(path, what: str) -> None:
    """Fail now, before any work, unless the file ``path`` can be written (its folder must exist).

    Raises:
        UserError: ``path`` is a folder, its folder is missing or cannot be written, or it exists
            and cannot be written.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; give a file name")
    if not folder.is_dir():
        raise UserError(f"cannot write {what} {str(path)!r}: folder {str(folder)!r} does not exist")
    reason = _cannot_write(folder)
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = "permission denied"
    if reason:
        raise UserError(f"cannot write {what} {str(path)!r}: {reason}")
