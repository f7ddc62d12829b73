"""Float tolerances of the tests, derived from the arithmetic instead of read off one machine.

Which kernels ATen runs depends on the CPU (``ATEN_CPU_CAPABILITY``: ``default``, ``avx2``,
``avx512``), and vectorised kernels add the same terms in other orders. A float comparison
therefore has to allow what a change of summation order can do, and no more than the
smallest error the test exists to catch. The rules used throughout the suite:

* **A sum of n terms**, in any order and any blocking, is within ``gamma(n) * sum |x_i|``
  of the exact sum, ``gamma(n) = n u / (1 - n u)`` with ``u`` the unit roundoff of the
  dtype (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and
  Sec. 4.2). For terms of one sign (``|x|``, ``x**2``, counts) ``sum |x_i|`` is the sum
  itself, so the bound is a relative tolerance on the result: :func:`sum_rtol`. Each
  further rounding of that result (a division by the count, a product with ``|w|``, a
  square root) adds one ``u``.
* **Deep computations** (a forward and backward through a network) have no useful a
  priori bound in float32. Where the claim is about the mathematics (micro-batches add
  up to the whole batch; a selector computes this gradient), the test runs in float64,
  where rounding (``u = 1.1e-16``) sits more than ten orders of magnitude below any
  error it looks for, and the tolerance is :func:`deep_atol`.
* **Decisions** (a mask) are compared exactly away from ties: an entry may differ only
  where the reference score lies within a tolerance of the cut between kept and dropped
  (:func:`mask_mismatches`). Masks, frozen entries and bytes are compared exactly.
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon, the largest relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of ``n`` roundings."""
    nu = n * unit_roundoff(dtype)
    assert nu < 0.5, f"{n} roundings in {dtype} leave no useful bound"
    return nu / (1 - nu)


def sum_rtol(n_terms: int, dtype: torch.dtype = torch.float32, extra_ops: int = 0) -> float:
    """Relative tolerance for a sum of ``n_terms`` values of one sign, summed in any order,
    then rounded ``extra_ops`` more times (mean, product with ``|w|``, square root...).

    A sum of n terms takes n - 1 additions; each extra operation is one more rounding.
    """
    return gamma(max(n_terms - 1, 0) + extra_ops, dtype)


def deep_atol(scale: float, n_terms: int, depth: int, dtype: torch.dtype = torch.float64) -> float:
    """Absolute tolerance for two evaluations of a ``depth``-stage computation whose every
    stage sums at most ``n_terms`` terms, results of size ``scale``.

    Each stage may add ``gamma(n_terms)`` of its inputs' size, and both sides may err in
    opposite directions: ``2 * depth * gamma(n_terms) * scale``. Only meant for float64,
    where this stays orders of magnitude below any real difference; in float32 a network's
    error is not bounded usefully this way (use float64, or compare decisions).
    """
    return 2 * depth * gamma(n_terms, dtype) * scale


def ref_topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per output row (kernel flattened to [out, -1]) the k highest scores, via argsort."""
    rows = scores.reshape(scores.shape[0], -1)
    order = torch.argsort(rows, dim=1, descending=True)
    mask = torch.zeros(rows.shape, dtype=torch.bool)
    for r in range(rows.shape[0]):
        mask[r, order[r, :k]] = True
    return mask.view(scores.shape)


def ref_global_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Top round(fraction * N) (at least 1) entries of all scores concatenated."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    n_keep = max(1, round(fraction * flat.numel()))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, descending=True)[:n_keep]] = True
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[start:start + size].view(scores[n].shape)
        start += size
    return out


def mask_mismatches(mask, scores: dict[str, torch.Tensor], *, k: int | None = None,
                    fraction: float | None = None, tol: float) -> list[str]:
    """How ``mask`` departs from the top-K per row / global top fraction of ``scores``.

    Entries may differ from the reference only where the reference score is within
    ``tol * max|score|`` of the boundary between kept and dropped (numerical ties),
    and at most a few of them; the count kept must be exact.
    """
    problems, n_diff, n_kept = [], 0, 0
    if k is not None:
        for n, sc in scores.items():
            rows = sc.reshape(sc.shape[0], -1)
            got = mask[n]
            if got.shape != sc.shape or got.dtype != torch.bool:
                problems.append(f"{n}: mask is {got.dtype} {tuple(got.shape)}, expected bool {tuple(sc.shape)}")
                continue
            got = got.reshape(rows.shape)
            if not (got.sum(1) == k).all():
                problems.append(f"{n}: not exactly {k} per row")
            diff = got != ref_topk_mask(sc, k).reshape(rows.shape)
            if diff.any():
                v = rows.sort(dim=1, descending=True).values
                boundary = (v[:, k - 1] + v[:, k]) / 2
                far = diff & ((rows - boundary[:, None]).abs() > tol * rows.abs().max())
                if far.any():
                    problems.append(f"{n}: {int(far.sum())} entries differ from the reference top-{k}")
            n_diff += int(diff.sum())
            n_kept += int(got.sum())
    else:
        ref = ref_global_masks(scores, fraction)
        flat = torch.cat([sc.reshape(-1).double() for sc in scores.values()])
        n_keep = max(1, round(fraction * flat.numel()))
        v = flat.sort(descending=True).values
        boundary = (v[n_keep - 1] + v[min(n_keep, flat.numel() - 1)]) / 2
        scale = flat.abs().max()
        for n, sc in scores.items():
            got = mask[n]
            if got.shape != sc.shape or got.dtype != torch.bool:
                problems.append(f"{n}: mask is {got.dtype} {tuple(got.shape)}, expected bool {tuple(sc.shape)}")
                continue
            diff = got != ref[n]
            far = diff & ((sc.double() - boundary).abs() > tol * scale)
            if far.any():
                problems.append(f"{n}: {int(far.sum())} entries differ from the reference global top")
            n_diff += int(diff.sum())
            n_kept += int(got.sum())
        if n_kept != n_keep:
            problems.append(f"{n_kept} entries kept, expected {n_keep}")
    if n_diff > max(2, 0.02 * n_kept):
        problems.append(f"{n_diff} entries differ in all (too many to be ties)")
    return problems


def assert_mask_matches(mask, scores, **budget):
    problems = mask_mismatches(mask, scores, **budget)
    assert not problems, "; ".join(problems)
