"""Error-budget arithmetic: burn rates, budget shares and SLO periods.

An SLO with target T (such as 0.999) allows an error ratio of 1 - T over its period (such
as 30 days). The burn rate of a window is its error ratio divided by that allowance: at a
burn rate of 1 the budget lasts exactly one period, at 14.4 a 30-day budget is gone in
50 hours. The period does not change the burn rate, only what a window's burn costs.
"""

from __future__ import annotations

import math
import re

from stormgate.errors import UsageError

DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0, "y": 31_536_000.0}
"""Seconds per unit of a Prometheus duration; Prometheus counts a year as 365 days."""
DURATION_PATTERN = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
DURATION_PART = re.compile(r"(\d+)(ms|[smhdwy])")


def parse_duration_s(text: str) -> float:
    """Convert a Prometheus duration such as `30d`, `4w` or `1h30m` to seconds.

    Raises UsageError, a ValueError, naming the text and the expected form.
    """
    if not DURATION_PATTERN.fullmatch(text):
        raise UsageError(
            f"{text!r} is not a duration; write a number and a unit (ms, s, m, h, d, w, y), such as '30d' or '1h30m'"
        )
    seconds = sum(int(amount) * DURATION_UNITS_S[unit] for amount, unit in DURATION_PART.findall(text))
    if seconds <= 0:
        raise UsageError(f"duration {text!r} is zero; give a positive duration such as '30d'")
    return seconds


def allowed_error_ratio(target: float) -> float:
    """Return the error ratio that an SLO target leaves as budget: 1 - target."""
    if not 0.0 < target < 1.0:
        raise UsageError(f"SLO target must lie strictly between 0 and 1, got {target!r}; for 99.9 % write 0.999")
    return 1.0 - target


def burn_rate(error_ratio: float, target: float) -> float:
    """Return how many times faster than allowed a window spends the error budget.

    NaN stays NaN, so a window without data can never look like a low burn rate.
    """
    return error_ratio / allowed_error_ratio(target)


def budget_used_share(rate: float, *, window_s: float, period_s: float) -> float:
    """Return the share of one period's error budget that a window at this burn rate used.

    A burn rate of 14.4 over one hour uses 14.4 / 720 = 2 % of a 30-day budget and 8.6 %
    of a 7-day budget.
    """
    if window_s < 0 or period_s <= 0:
        raise UsageError(f"window_s must be >= 0 and period_s > 0, got window_s={window_s!r}, period_s={period_s!r}")
    return rate * window_s / period_s


def budget_exhaustion_s(rate: float, *, period_s: float) -> float:
    """Return how long a full budget of one period lasts at this burn rate; infinite at rate 0."""
    if period_s <= 0:
        raise UsageError(f"period_s must be > 0, got {period_s!r}")
    if math.isnan(rate):
        return math.nan
    if rate <= 0:
        return math.inf
    return period_s / rate


def burn_rate_for_budget_share(share: float, *, window_s: float, period_s: float) -> float:
    """Return the burn rate at which a window uses `share` of one period's budget.

    This is how multi-window alert thresholds are derived: 2 % of a 30-day budget in one
    hour is a burn rate of 14.4.
    """
    if window_s <= 0 or period_s <= 0:
        raise UsageError(f"window_s and period_s must be > 0, got window_s={window_s!r}, period_s={period_s!r}")
    return share * period_s / window_s
