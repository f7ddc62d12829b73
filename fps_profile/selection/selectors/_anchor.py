"""GD-FPS's pre-training anchor: mean |x| per input feature of every ranked weight, saved to a file.

The anchor is the statistic FPS takes on the downstream data (:mod:`._activations`,
``ord=1``: mean ``|x|`` over every token of every sample, convolutions per input
channel and kernel offset, GPT-2's ``Conv1D`` along its input axis), taken once on
data from the *pre-training* distribution with the same pre-trained model. It is a
safetensors file: one float32 tensor per weight, named as in
``model.named_parameters()`` and shaped as the statistic (``[in_features]``, or
``[in_channels, *kernel]`` for a convolution), with a header naming the format,
the model class, the scope and the token count behind each tensor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fps_profile.errors import UserError

FORMAT = "fps-profile-gd-fps-anchor"
FORMAT_VERSION = "1"


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def anchor_stats(model: nn.Module, batches: Iterable, *, scope="all-weights",
                 micro_batch: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Mean ``|x|`` per input feature of every weight ``scope`` ranks, over ``batches``.

    Args:
        model: The pre-trained model (left as found).
        batches: Pre-training-distribution data: image (or token) tensors or
            ``(inputs, labels)`` tuples, as :func:`fps_profile.select` takes them.
        scope: Which weights get a statistic; the default ``"all-weights"`` covers
            the ranked weights of every built-in scope.
        micro_batch: Run each batch in chunks of this many samples (same sums).

    Returns:
        ``(means, tokens)``: float32 CPU tensors by parameter name, and how many
        tokens (output positions, for a convolution) each mean is over.

    Raises:
        UserError: No batches, or a weight no linear/convolution call uses.
    """
    from fps_profile.knobs import parse_micro_batch
    from fps_profile.selection.scope import Role, assign_roles, get_scope
    from fps_profile.selection.batches import Batches, left_as_found
    from fps_profile.selection.selectors._activations import InputStats
    from fps_profile.selection.selectors.base import Target

    micro_batch = parse_micro_batch(micro_batch)
    roles = assign_roles(model, get_scope(scope))
    params = dict(model.named_parameters())
    targets = [Target(n, params[n], mod, attr) for n, (role, mod, attr) in roles.items() if role is Role.RANKED]
    first = next(iter(params.values()))
    stats = InputStats(targets, ord=1, selector="gd-fps")
    with left_as_found(model):
        seen = stats.collect(model, Batches(batches, first.device, first.dtype), micro_batch)
    if not seen:
        raise UserError("gd-fps anchor: got no batches (the iterable was empty)")
    means = {t.name: (stats.sums[id(t.param)] / stats.counts[id(t.param)]).cpu() for t in targets}
    return means, {t.name: stats.counts[id(t.param)] for t in targets}


def save_anchor(model: nn.Module, batches: Iterable, path: str | os.PathLike, *, scope="all-weights",
                micro_batch: int | None = None) -> Path:
    """Compute :func:`anchor_stats` and write them atomically to ``path`` (safetensors).

    Returns:
        ``path`` as a :class:`~pathlib.Path`; pass it to the selector as ``anchor=``.

    Raises:
        UserError: As :func:`anchor_stats`, or ``path`` cannot be written (nothing is left behind).
    """
    from safetensors.torch import save_file

    from fps_profile.selection.scope import get_scope

    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write gd-fps anchor to {str(path)!r}: directory {str(path.parent)!r} does not exist")
    means, tokens = anchor_stats(model, batches, scope=scope, micro_batch=micro_batch)
    header = {"format": FORMAT, "version": FORMAT_VERSION, "model": type(model).__name__,
              "scope": get_scope(scope).name, "tokens": json.dumps(tokens)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        save_file({n: t.contiguous() for n, t in means.items()}, str(tmp), metadata=header)
        os.replace(tmp, path)
    except Exception as exc:  # OSError, or safetensors' own error type for I/O failures
        raise UserError(f"cannot write gd-fps anchor to {str(path)!r}: {first_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


class Anchor:
    """A saved anchor, opened and checked; tensors are read one at a time.

    Args:
        path: A file written by :func:`save_anchor`.

    Raises:
        UserError: The file is missing, unreadable, or not a GD-FPS anchor.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = str(path)
        if not Path(path).is_file():
            raise UserError(f"gd-fps anchor file {self.path!r} does not exist (write one with "
                            "fps_profile.selection.selectors.gdfps.save_anchor)")
        try:
            with safe_open(self.path, framework="pt") as f:
                header = f.metadata() or {}
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise UserError(f"gd-fps anchor {self.path!r} is not a readable safetensors file: "
                            f"{first_line(exc)}") from exc
        if header.get("format") != FORMAT:
            raise UserError(f"gd-fps anchor {self.path!r} is not a GD-FPS anchor file (no {FORMAT!r} header; "
                            "write one with fps_profile.selection.selectors.gdfps.save_anchor)")
        if header.get("version") != FORMAT_VERSION:
            raise UserError(f"gd-fps anchor {self.path!r} has format version {header.get('version')!r}; "
                            f"this fps-profile reads version {FORMAT_VERSION}")
        self.model, self.scope = header.get("model", "?"), header.get("scope", "?")

    def check(self, name: str, shape: tuple[int, ...] | None = None) -> None:
        """Fail in one line unless the file has a statistic for ``name`` (of ``shape``, when given)."""
        if name not in self.shapes:
            raise UserError(f"gd-fps anchor {self.path!r} has no statistic for {name!r} (it was computed on a "
                            f"{self.model} with scope {self.scope!r}: a different model, or a scope that does not "
                            "rank this weight)")
        if shape is not None and self.shapes[name] != tuple(shape):
            raise UserError(f"gd-fps anchor {self.path!r}: {name!r} has shape {list(self.shapes[name])}, but its "
                            f"input statistic here is {list(shape)} (computed for a different model)")

    def values(self, name: str) -> np.ndarray:
        """The statistic for ``name`` as a float32 NumPy array; non-finite or negative values fail in one line.

        Read through NumPy, not torch: no torch operation runs, so no memory tracker or
        fake-tensor mode sees the host copy; the caller copies it into a tensor it allocates.
        """
        from safetensors import safe_open

        self.check(name)
        try:
            with safe_open(self.path, framework="np") as f:
                values = np.asarray(f.get_tensor(name), dtype=np.float32)
        except Exception as exc:
            raise UserError(f"gd-fps anchor {self.path!r}: cannot read {name!r}: {first_line(exc)}") from exc
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            raise UserError(f"gd-fps anchor {self.path!r}: {name!r} holds {float(values[bad][0])!r}; "
                            "a mean |x| is finite and >= 0")
        return values


def check_eps(eps) -> float:
    """``eps`` as a float, or a one-line error unless it is finite and > 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise UserError(f"selector 'gd-fps': eps must be a finite number > 0, not {eps!r}")
    return float(eps)
