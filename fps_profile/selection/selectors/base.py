"""The selector interface: per-parameter scores, nothing else.

A selector only *scores* parameters. Which tensors are eligible is the scope's job
(:mod:`fps_profile.selection.scope`) and how many entries are kept is the budget's
(:mod:`fps_profile.selection.budget`); :func:`fps_profile.select` puts the three together.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fps_profile.errors import UserError

#: One batch as selectors see it: images and, where the data has them, labels.
Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Target:
    """A parameter the budget ranks entry by entry.

    Attributes:
        name: Full name as in ``model.named_parameters()``.
        param: The parameter itself.
        module: The module that owns it.
        attr: Its attribute name in ``module`` (e.g. ``"weight"``).
    """

    name: str
    param: nn.Parameter
    module: nn.Module
    attr: str

    @property
    def out_axis(self) -> int:
        """The axis of ``param`` indexing output neurons: 1 for GPT-2's ``Conv1D`` weight
        (``[in, out]``), else 0 (:func:`fps_profile.models.parts.output_axis`)."""
        from fps_profile.models.parts import output_axis

        return output_axis(self.module, self.attr)


class Selector:
    """Base class of every selector.

    Subclasses set the class attributes below, take their options as keyword-only
    ``__init__`` arguments, and implement :meth:`score` (and :meth:`prepare` when
    they need data). The life cycle is ``prepare`` once, ``score`` once per target
    (one target at a time, so no full-model score tensor need ever exist), then
    ``release``.

    Attributes:
        name: Registry name, set by :func:`fps_profile.selection.selectors.register`.
        needs_backward: Whether scoring runs a backward pass (GPS-like peak memory).
        needs_data: Whether :meth:`prepare` reads batches at all.
        needs_labels: Whether batches must carry labels.
        handles_micro_batch: Whether :meth:`prepare` splits its batches into
            ``micro_batch``-sized chunks itself (:func:`fps_profile.knobs.chunks`); if
            not, :func:`fps_profile.select` hands it each chunk as a batch.
        token_chunks: Whether :meth:`prepare`, given no ``micro_batch``, reads a batch of
            token ids in chunks of whole sequences (:func:`fps_profile.knobs.token_chunk`),
            so that its peak stops growing with the batch past one chunk.
        micro_batch: Set by :func:`fps_profile.select` before :meth:`prepare` (None: whole batches).
    """

    name: ClassVar[str] = ""
    needs_backward: ClassVar[bool] = False
    needs_data: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    handles_micro_batch: ClassVar[bool] = False
    token_chunks: ClassVar[bool] = False
    micro_batch: int | None = None

    def prepare(self, model: nn.Module, batches: Iterable[Batch], targets: Sequence[Target]) -> None:
        """Look at the model and data once (forward or backward passes).

        Args:
            model: The model; must be left as found (mode, ``.grad``, ``requires_grad``).
            batches: ``(images, labels)`` pairs already on the model's device and dtype.
            targets: The parameters that will be scored.
        """

    def score(self, target: Target) -> torch.Tensor:
        """Score every entry of ``target.param``; higher means "train this one".

        Returns:
            A floating tensor of the parameter's shape.
        """
        raise NotImplementedError

    def release(self) -> None:
        """Drop whatever :meth:`prepare` kept (statistics, gradients)."""

    @classmethod
    def describe(cls) -> str:
        """First line of the class docstring."""
        return (inspect.getdoc(cls) or "").splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The keyword options this selector takes, with their defaults."""
        sig = inspect.signature(cls.__init__)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


def check_labels(selector: Selector, labels: torch.Tensor | None) -> torch.Tensor:
    """Return ``labels`` or fail with a one-line error naming the selector."""
    if labels is None:
        raise UserError(
            f"selector {selector.name!r} needs labels: pass (images, labels) batches"
        )
    return labels
