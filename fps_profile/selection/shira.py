"""The ``shira:R`` budget: the ``R*(m+n)`` best entries of every ranked ``m x n`` tensor.

PEFT's SHiRA adapter (``peft.tuners.shira``) trains, in every ``nn.Linear`` it wraps,
exactly ``r * (m + n)`` entries of the ``m x n`` weight (the size of a rank-``r`` LoRA),
with one ``r`` for the whole adapter. A per-row top-``k`` budget keeps ``k * m``
entries, which equals ``r * (m + n)`` only by coincidence. :class:`ShiraRank` keeps the
``r * (m + n)`` best-scoring entries of each ranked tensor instead (any selector's
scores), so its masks convert to an adapter with nothing lost
(:mod:`fps_profile.integrations.peft`). The scope that goes with it, ``shira``, is
registered in :mod:`fps_profile.selection.scope`.

It lives here, beside the other budgets, so that rows, the sim and the measured phases
know its exact counts without ``peft``.
"""

from __future__ import annotations

from fps_profile.errors import UserError
from fps_profile.selection.budget import NAMED_BUDGETS, Budget, positive_index
from fps_profile.selection.mask_entry import MaskEntry, rows_cols
from fps_profile.selection.scope import SCOPES

PREFIX = "shira:"

#: Linear weights ranked, the classifier trained whole, everything else frozen (registered in
#: :mod:`fps_profile.selection.scope`).
SHIRA_SCOPE = SCOPES.get("shira")


def parse_rank(text) -> int:
    """``"shira:R"`` -> ``R`` (an integer >= 1).

    Raises:
        UserError: Anything else.
    """
    head, sep, value = str(text).strip().partition(":")
    value = value.strip()
    if head.strip() != "shira" or not sep or not value.isdigit() or int(value) < 1:
        raise UserError(f"a SHiRA budget looks like shira:8 (r, an integer >= 1), not {text!r}")
    return int(value)


def is_shira(text) -> bool:
    """Whether ``text`` is written as a SHiRA budget (``shira:...``; :func:`parse_rank` checks the rest)."""
    return isinstance(text, str) and text.strip().startswith(PREFIX)


def shira_size(r: int, name: str, shape: tuple[int, ...], out_axis: int = 0) -> int:
    """Entries ``shira:r`` keeps of tensor ``name`` of ``shape``: ``r * (rows + cols)``.

    ``rows`` and ``cols`` are the tensor's output neurons and inputs (4-D kernels as
    ``[out, in*kh*kw]``, as per-row budgets read them).

    Raises:
        UserError: More than the tensor has (as PEFT refuses it), naming the largest ``r`` it allows.
    """
    rows, cols = rows_cols(tuple(shape), out_axis)
    n = r * (rows + cols)
    if n > rows * cols:
        raise UserError(f"shira:{r} keeps r*(m+n) = {n:,} entries of {name!r} ({rows}x{cols}), more than "
                        f"it has; use r <= {rows * cols // (rows + cols)}")
    return n


class ShiraRank(Budget):
    """The ``r * (m + n)`` best scores of every ranked ``m x n`` tensor (SHiRA's size).

    A tensor smaller than ``r * (m + n)`` entries is an error, as it is in PEFT.

    Args:
        r: SHiRA's ``r``, an integer >= 1.
    """

    def __init__(self, r: int) -> None:
        self.r = positive_index(r, "shira r")

    @classmethod
    def parse(cls, text: str) -> ShiraRank:
        """``"shira:R"`` (e.g. ``"shira:8"``) as a budget."""
        return cls(parse_rank(text))

    def describe(self) -> str:
        return f"{PREFIX}{self.r}"

    def size(self, name: str, shape: tuple[int, ...], out_axis: int = 0) -> int:
        """Entries kept of tensor ``name`` of ``shape`` (:func:`shira_size`)."""
        return shira_size(self.r, name, shape, out_axis)

    def entries(self, scored, total=None, out_axes=None):
        out_axes = out_axes or {}
        for name, scores in scored:
            shape = tuple(scores.shape)
            n = self.size(name, shape, out_axes.get(name, 0))
            idx = scores.detach().reshape(-1).topk(n, sorted=False).indices.sort().values
            del scores
            yield name, MaskEntry.from_positions(shape, idx)


NAMED_BUDGETS["shira"] = ShiraRank.parse

__all__ = ["PREFIX", "SHIRA_SCOPE", "ShiraRank", "is_shira", "parse_rank", "shira_size"]
