"""The ``shira:R`` budget and the ``shira`` scope: masks that PEFT's SHiRA adapter holds exactly.

SHiRA (``peft.tuners.shira``) trains, in every ``nn.Linear`` it wraps, exactly
``r * (m + n)`` entries of the ``m x n`` weight (the size of a rank-``r`` LoRA), with
one ``r`` for the whole adapter. A per-row top-``k`` budget keeps ``k * m`` entries,
which equals ``r * (m + n)`` only by coincidence. :class:`ShiraRank` keeps the
``r * (m + n)`` best-scoring entries of each ranked tensor instead (any selector's
scores), so its masks convert to an adapter with nothing lost.

:data:`SHIRA_SCOPE` ranks only ``nn.Linear`` weights and trains whole only the
classifier (PEFT's ``modules_to_save``); biases, norms, layer scales, position
tables and convolutions stay frozen (PEFT cannot train them beside SHiRA, see
:mod:`fps_profile.integrations.peft`).
"""

from __future__ import annotations

import operator

from torch import nn

from fps_profile.selection.budget import NAMED_BUDGETS, Budget
from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry, rows_cols
from fps_profile.selection.scope import Scope

#: Linear weights ranked; the classifier trained whole; everything else frozen.
SHIRA_SCOPE = Scope("shira", trainable=("head",), rank_modules=(nn.Linear,),
                    about="what PEFT SHiRA can train: nn.Linear weights ranked, the classifier trained whole "
                          "(modules_to_save); biases, norms, layer scales, convolutions frozen")


class ShiraRank(Budget):
    """The ``r * (m + n)`` best scores of every ranked ``m x n`` tensor (SHiRA's size).

    ``m`` and ``n`` are the tensor's output neurons and inputs (4-D kernels as
    ``[out, in*kh*kw]``, as per-row budgets read them); a tensor smaller than
    ``r * (m + n)`` entries is an error, as it is in PEFT.

    Args:
        r: SHiRA's ``r``, an integer >= 1.
    """

    def __init__(self, r: int) -> None:
        try:
            if isinstance(r, bool):
                raise TypeError
            r_int = operator.index(r)
        except TypeError:
            raise UserError(f"shira r must be an integer >= 1, not {r!r}") from None
        if r_int < 1:
            raise UserError(f"shira r must be an integer >= 1, not {r!r}")
        self.r = r_int

    @classmethod
    def parse(cls, text: str) -> ShiraRank:
        """``"shira:R"`` (e.g. ``"shira:8"``) as a budget."""
        head, _, value = str(text).partition(":")
        if head.strip() != "shira" or not value.strip().isdigit():
            raise UserError(f"a SHiRA budget looks like shira:8 (r, an integer >= 1), not {text!r}")
        return cls(int(value))

    def describe(self) -> str:
        return f"shira:{self.r}"

    def size(self, name: str, shape: tuple[int, ...], out_axis: int = 0) -> int:
        """Entries kept of tensor ``name`` of ``shape``: ``r * (rows + cols)``."""
        rows, cols = rows_cols(tuple(shape), out_axis)
        n = self.r * (rows + cols)
        if n > rows * cols:
            raise UserError(f"shira:{self.r} keeps r*(m+n) = {n:,} entries of {name!r} ({rows}x{cols}), more than "
                            f"it has; use r <= {rows * cols // (rows + cols)}")
        return n

    def entries(self, scored, total=None, out_axes=None):
        out_axes = out_axes or {}
        for name, scores in scored:
            shape = tuple(scores.shape)
            n = self.size(name, shape, out_axes.get(name, 0))
            idx = scores.detach().reshape(-1).topk(n, sorted=False).indices.sort().values
            del scores
            yield name, MaskEntry.from_positions(shape, idx)


NAMED_BUDGETS["shira"] = ShiraRank.parse
