"""A selector that raises becomes one line naming it, the tensor and the exception.

A plugin's bug (or a built-in's) inside ``prepare`` or ``score`` would otherwise surface as a
traceback deep inside the selection, or as a row error without a name. What is not the
selector's own failure passes through unchanged: a :class:`~fps_profile.errors.UserError`
(bad input, already one line), an out-of-memory (a row's ``oom``), and torch's own exception
types (the sim's fake tensors say "needs tensor values" with them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fps_profile.errors import SelectorError, UserError

_OOM_TEXT = ("out of memory", "can't allocate memory")


def passes_through(exc: BaseException) -> bool:
    """Whether ``exc`` is not the selector's own failure (see the module docstring)."""
    import torch

    if isinstance(exc, (UserError, MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXT):
        return True
    return type(exc).__module__.split(".")[0] == "torch"


@contextlib.contextmanager
def guarded(selector: str, where: str) -> Iterator[None]:
    """Re-raise a failure of ``selector`` inside the block as :class:`~fps_profile.errors.SelectorError`.

    Args:
        selector: The selector's name.
        where: What it was doing, e.g. ``"prepare"`` or ``"score of 'blocks.0.mlp.fc1.weight'"``.
    """
    try:
        yield
    except Exception as exc:
        if passes_through(exc):
            raise
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise SelectorError(f"selector {selector!r} failed in {where}: {text}") from exc
