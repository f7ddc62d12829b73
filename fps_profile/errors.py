"""Errors that end in a clear one-line message instead of a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A problem with what the user asked for (bad option, unknown name, bad file).

    The CLI prints ``fps-profile: error: <message>`` and exits with status 2.
    """


def did_you_mean(name: str, known: Iterable[str], what: str, *, show_known: bool = True) -> UserError:
    """Build an "unknown X" error that suggests the closest known names.

    Args:
        name: The name that was not found.
        known: Every valid name.
        what: What kind of thing it is, e.g. ``"selector"``.
        show_known: List every known name too (off for long lists such as timm models).

    Returns:
        A :class:`UserError` ready to raise.
    """
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    msg = f"unknown {what} {name!r}"
    if close:
        msg += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if show_known:
        msg += f" (known: {', '.join(known)})"
    return UserError(msg)


class SelectorError(UserError):
    """A selector raised while it ran (``prepare`` or ``score``): one line naming the selector, the
    tensor and the exception, which is kept as ``__cause__`` (``fps-profile --debug`` shows its
    traceback, with file and line)."""
