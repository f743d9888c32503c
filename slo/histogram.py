"""Checks on Prometheus histogram buckets that `histogram_quantile` does not make itself.

When the requested quantile lies in the +Inf bucket, `histogram_quantile` returns the
highest finite bucket bound: a lower bound of the truth that can look like a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def parse_bound(text: str) -> float:
    """Convert an `le` label value such as `0.25` or `+Inf` to a float."""
    return math.inf if text == "+Inf" else float(text)


def observation_count(buckets: Mapping[float, float]) -> float:
    """Return the number of observations: the count of the +Inf bucket; NaN without one."""
    return buckets.get(math.inf, math.nan)


def highest_finite_bound(buckets: Mapping[float, float]) -> float:
    """Return the largest finite `le` bound; NaN when the histogram has none."""
    finite = [bound for bound in buckets if math.isfinite(bound)]
    return max(finite) if finite else math.nan


def quantile_beyond_finite_buckets(quantile: float, buckets: Mapping[float, float]) -> bool:
    """Return True when the quantile's rank falls above every finite bucket.

    `buckets` maps each `le` bound to its cumulative count over the window, +Inf included.
    """
    total = observation_count(buckets)
    highest = highest_finite_bound(buckets)
    if math.isnan(total) or math.isnan(highest):
        return False
    return buckets[highest] < quantile * total
