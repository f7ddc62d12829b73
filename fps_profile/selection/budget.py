"""Budget policies: how many of the ranked entries become trainable.

* :class:`PerRowTopK` (GPS's policy, the default): in every output row of every
  ranked tensor (4-D kernels flattened to ``[out, in*kh*kw]``), the ``k``
  highest-scoring entries. It needs one tensor's scores at a time. A row is an
  output neuron: for a weight stored ``[in, out]`` (GPT-2's ``Conv1D``, output
  axis 1) it is a column.
* :class:`GlobalFraction`: the top ``fraction`` of all ranked entries' scores,
  compared across tensors. It streams too: one tensor's scores and the best
  entries so far (see its docstring for the peak).

Both write the positions of the kept entries straight from ``torch.topk``
(:class:`~fps_profile.selection.mask.MaskEntry`); no bool mask is ever built. Ties are
broken by ``torch.topk`` (implementation-defined; continuous scores practically
never tie).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from fps_profile.errors import UserError
from fps_profile.selection.mask_entry import MaskEntry, rows_cols

Scored = Iterable[tuple[str, torch.Tensor]]


class Budget:
    """Turns per-tensor scores into masks (True = trainable)."""

    def describe(self) -> str:
        raise NotImplementedError

    def entries(self, scored: Scored, total: int | None = None,
                out_axes: Mapping[str, int] | None = None) -> Iterator[tuple[str, MaskEntry]]:
        """Consume ``(name, scores)`` pairs lazily and yield ``(name, entry)`` pairs.

        Args:
            scored: Scores of each ranked tensor, one tensor at a time.
            total: Entries of all ranked tensors together, where the caller knows it
                (a global budget then needs no more than one tensor's scores at once).
            out_axes: Tensor name -> axis of its output neurons, for tensors where it
                is not 0 (:attr:`fps_profile.selection.selectors.Target.out_axis`).
        """
        raise NotImplementedError

    def masks(self, scored: Scored) -> Iterator[tuple[str, torch.Tensor]]:
        """As :meth:`entries`, with each mask as a bool tensor of the scores' shape."""
        for name, entry in self.entries(scored):
            yield name, entry.dense()


class PerRowTopK(Budget):
    """The ``k`` largest scores of every output row.

    Args:
        k: Entries per row, at least 1 and at most the row length.
    """

    def __init__(self, k: int) -> None:
        self.k = positive_index(k, "k")

    def describe(self) -> str:
        return f"per-row top-{self.k}"

    def row_entry(self, name: str, scores: torch.Tensor, out_axis: int = 0) -> MaskEntry:
        """The ``k`` best positions of every row of one tensor's scores (``k`` ints per row).

        With ``out_axis=1`` (a 2-D ``[in, out]`` weight) a row is a column: the ``k``
        best inputs of every output neuron.
        """
        rows, cols = rows_cols(tuple(scores.shape), out_axis)
        if self.k > cols:
            raise UserError(f"k={self.k} is larger than a row of {name!r} ({cols} entries)")
        if out_axis == 1 and scores.dim() == 2:
            idx = scores.topk(self.k, dim=0, sorted=False).indices  # [k, out]: the inputs of each column
            idx = idx.mul_(rows).add_(torch.arange(rows, device=idx.device))
            return MaskEntry.from_positions(scores.shape, idx.view(-1).sort().values)
        idx = scores.reshape(rows, cols).topk(self.k, dim=1, sorted=False).indices
        idx = idx.sort(dim=1).values
        idx += torch.arange(0, rows * cols, cols, device=idx.device).unsqueeze(1)
        return MaskEntry.from_positions(scores.shape, idx, k=self.k)

    def row_mask(self, name: str, scores: torch.Tensor) -> torch.Tensor:
        """:meth:`row_entry` as a bool tensor of the scores' shape."""
        return self.row_entry(name, scores).dense()

    def entries(self, scored, total=None, out_axes=None):
        out_axes = out_axes or {}
        for name, scores in scored:
            yield name, self.row_entry(name, scores, out_axes.get(name, 0))
            del scores


class GlobalFraction(Budget):
    """The top ``fraction`` of every ranked entry, compared across tensors.

    Streams over the tensors, keeping only the best ``n`` entries so far (a
    float32 score and an int64 position each, ``n`` = entries kept): each
    tensor's own top ``n`` is merged into them. Peak memory: the current
    tensor's scores (which the selector holds anyway) plus at most 40 bytes per
    kept entry, never all scores at once (measured: 24 to 38 bytes per kept
    entry; tests/test_scope_budget.py checks the bound). That needs ``total``;
    without it the scores are collected first (4 bytes per ranked entry).

    Args:
        fraction: In ``(0, 1]``; at least one entry is always kept.
    """

    def __init__(self, fraction: float) -> None:
        try:
            f = float(fraction)
        except (TypeError, ValueError):
            raise UserError(f"fraction must be a number in (0, 1], not {fraction!r}") from None
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise UserError(f"fraction must be in (0, 1], not {fraction!r}")
        self.fraction = f

    def describe(self) -> str:
        return f"global top-{self.fraction:g}"

    def keep(self, total: int) -> int:
        """Entries kept out of ``total`` ranked ones."""
        return max(1, round(self.fraction * total))

    def entries(self, scored, total=None, out_axes=None):
        if total is None:
            scored = list(scored)
            total = sum(s.numel() for _, s in scored)
        n = self.keep(total)
        names, shapes, best_val, best_pos = stream_best(scored, n)
        if best_pos is None:
            return
        del best_val
        order = best_pos.sort().values
        del best_pos
        sizes = [math.prod(s) for s in shapes]
        start = lo = 0
        for name, shape, size, cut in zip(names, shapes, sizes, _cuts(order, sizes)):
            yield name, MaskEntry.from_positions(shape, order[lo:cut] - start)
            start, lo = start + size, cut


def proportional_split(n: int, sizes: list[int]) -> list[int]:
    """``n`` entries split over tensors of ``sizes`` in proportion (largest remainders; sums to ``n``)."""
    total = sum(sizes)
    if not total:
        return [0] * len(sizes)
    exact = [n * s / total for s in sizes]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _cuts(order: torch.Tensor, sizes: list[int]) -> list[int]:
    """Where each tensor's positions end in the sorted global ``order``."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(order):
        # The sim's fake scores have no values: the split follows the tensors' sizes
        # (as fps_profile.sim.masks counts it); the total, and so the bytes, are exact.
        return list(itertools.accumulate(proportional_split(order.numel(), sizes)))
    ends = torch.tensor(sizes, device=order.device).cumsum(0)
    return torch.searchsorted(order, ends).tolist()


def stream_best(scored, n: int) -> tuple[list[str], list[tuple[int, ...]], torch.Tensor | None, torch.Tensor | None]:
    """The ``n`` best scores over every tensor of ``scored``, taken one tensor at a time: at most
    ``n`` values and positions are held beside the tensor being read.

    Returns:
        ``(names, shapes, values, positions)``: the tensors' names and shapes in order, the kept
        scores (float32) and their positions in the tensors' concatenation (int64, unordered);
        ``None, None`` for no tensors.
    """
    names, shapes = [], []
    best_val = best_pos = None
    offset = 0
    for name, scores in scored:
        names.append(name)
        shapes.append(tuple(scores.shape))
        flat = scores.detach().reshape(-1)
        vals, pos = flat.topk(min(n, flat.numel()), sorted=False)
        del flat, scores
        vals, pos = vals.float(), pos.add_(offset)
        offset += math.prod(shapes[-1])
        if best_val is not None:
            vals, pos = torch.cat([best_val, vals]), torch.cat([best_pos, pos])
            best_val = best_pos = None
        if vals.numel() > n:
            vals, sel = vals.topk(n, sorted=False)
            pos = pos[sel]
            del sel
        best_val, best_pos = vals, pos
        del vals, pos
    return names, shapes, best_val, best_pos


def positive_index(value, what: str) -> int:
    """``value`` as an integer >= 1 (a bool is not one), or a one-line error naming ``what``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise UserError(f"{what} must be an integer >= 1, not {value!r}") from None
    if n < 1:
        raise UserError(f"{what} must be an integer >= 1, not {value!r}")
    return n


#: Budget kinds written ``"<name>:<args>"`` (e.g. ``"shira:8"``) -> their parser; a module defining
#: one registers it (:mod:`fps_profile.selection.shira` for ``shira``).
NAMED_BUDGETS: dict[str, Callable[[str], Budget]] = {}


def make_budget(k: int | None = None, fraction: float | None = None, budget: Budget | str | None = None) -> Budget:
    """The budget for exactly one of ``k`` (per-row top-K), ``fraction`` (global) or ``budget``:
    a :class:`Budget`, or a named kind of :data:`NAMED_BUDGETS` such as ``"shira:R"``."""
    if budget is not None:
        if k is not None or fraction is not None:
            raise UserError("give exactly one of k, fraction or budget")
        if isinstance(budget, Budget):
            return budget
        parse = NAMED_BUDGETS.get(str(budget).partition(":")[0])
        if parse is None:
            raise UserError(f"unknown budget {budget!r} (named kinds: {', '.join(sorted(NAMED_BUDGETS)) or 'none'}; "
                            "or give k= or fraction=)")
        return parse(str(budget))
    if (k is None) == (fraction is None):
        raise UserError("give exactly one of k (per-row top-K) or fraction (global top fraction)")
    return PerRowTopK(k) if k is not None else GlobalFraction(fraction)
