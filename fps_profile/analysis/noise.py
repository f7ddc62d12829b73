"""Is a change of wall time more than noise? Confidence intervals of the repeats, as asv judges.

asv (``asv compare``) calls a benchmark slower only when the ratio of the two medians exceeds
its factor *and* the two results differ statistically; with few samples the second test is
that their confidence intervals do not overlap. The gate does the same with the repeats every
row carries (``wall_times_s``): :func:`differ` is that test.

The interval is the distribution-free one of the median, from order statistics:
``[x_(j), x_(n+1-j)]`` of the sorted repeats covers the median with probability
``1 - 2 P(B <= j - 1)``, ``B ~ Binomial(n, 1/2)``; the widest ``j`` that still covers 99% is
used. Fewer than 8 repeats cannot cover 99% this way (``[min, max]`` covers ``1 - 2^(1-n)``:
75% for the default 3 repeats), so there the interval is the whole range of the repeats: the
most the samples can say, and the pessimistic choice (ranges that overlap are not a change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.99


def _coverage(n: int, j: int) -> float:
    """Probability that ``[x_(j), x_(n+1-j)]`` of ``n`` samples holds the median."""
    below = sum(math.comb(n, i) for i in range(j)) / 2**n
    return 1 - 2 * below


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The confidence interval of the median of ``samples`` (see the module docstring).

    Raises:
        ValueError: No samples.
    """
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("no samples")
    n, j = len(xs), 1
    while j + 1 <= (n + 1) // 2 and _coverage(n, j + 1) >= confidence:
        j += 1
    return xs[j - 1], xs[n - j]


def differ(old: Sequence[float] | None, new: Sequence[float] | None) -> bool | None:
    """Whether two sets of repeats differ: their intervals do not overlap.

    Returns:
        True or False; None when either side has fewer than 2 repeats (nothing to test:
        the caller judges by the ratio alone, as asv does for a single sample).
    """
    if not old or not new or len(old) < 2 or len(new) < 2:
        return None
    a, b = median_interval(old), median_interval(new)
    return a[1] < b[0] or b[1] < a[0]
