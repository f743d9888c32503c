"""Counter arithmetic over sample arrays: reset-aware increases, sums over series and chunks.

A counter only grows until its process restarts, when it starts again from zero. Summing
counters of several instances before looking for resets hides a restart (the sum merely
dips), so increases are computed per series first, then added up. A ratio is always the
sum of errors over the sum of requests, never an average of per-series or per-step ratios.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SeriesKey = tuple[tuple[str, str], ...]
"""Sorted label pairs of a series without `__name__`, which PromQL functions drop."""


def series_key(labels: Mapping[str, str]) -> SeriesKey:
    return tuple(sorted((name, value) for name, value in labels.items() if name != "__name__"))


def is_valid_counter_value(value: float) -> bool:
    return not math.isnan(value) and value >= 0.0


def counter_increase(values: Sequence[float], *, start_value: float = 0.0) -> float:
    """Return the increase of a counter over its samples, counting a drop as a restart from zero.

    `start_value` is the counter's value before the first sample: the last value seen before
    the window, or 0 for a series created inside it. A NaN or negative sample makes the
    result NaN, because no honest increase exists then.

    NOTE: a restart is seen only as a drop. An instance that restarts and counts past its old
    value before the next scrape looks like a plain increase, as it does to PromQL's `increase()`.
    """
    if not is_valid_counter_value(start_value):
        return math.nan
    total = 0.0
    previous = start_value
    for value in values:
        if not is_valid_counter_value(value):
            return math.nan
        # After a restart the counter counts from zero, so its whole new value is increase.
        total += value - previous if value >= previous else value
        previous = value
    return total


@dataclass
class CounterWindow:
    """Reset-aware increases of every series of one selector, fed chunk by chunk in time order.

    The last value of each series is carried from one chunk to the next, so splitting a
    range into chunks neither loses nor double-counts the increase across a chunk border.
    """

    last_values: dict[SeriesKey, float] = field(default_factory=dict)
    """Latest valid value of each series, starting with the values seen before the window."""
    increases: dict[SeriesKey, float] = field(default_factory=dict)
    """Increase of each series that has at least one sample inside the window."""
    points: int = 0
    invalid_points: int = 0
    """Samples that were NaN or negative; any of them makes the window's total NaN."""

    @classmethod
    def starting_from(cls, baselines: Mapping[SeriesKey, float]) -> CounterWindow:
        """Start a window from each series' last value before it; absent series count from zero."""
        window = cls()
        for key, value in baselines.items():
            if is_valid_counter_value(value):
                window.last_values[key] = value
            else:
                window.invalid_points += 1
        return window

    def add_chunk(self, series: Mapping[SeriesKey, Sequence[float]]) -> None:
        """Add the samples of one chunk of the range; chunks must arrive in time order."""
        for key, values in series.items():
            if not values:
                continue
            increase = counter_increase(values, start_value=self.last_values.get(key, 0.0))
            self.points += len(values)
            if math.isnan(increase):
                self.invalid_points += sum(1 for value in values if not is_valid_counter_value(value))
                continue
            self.increases[key] = self.increases.get(key, 0.0) + increase
            self.last_values[key] = values[-1]

    @property
    def series_count(self) -> int:
        return len(self.increases)

    @property
    def total(self) -> float:
        """Sum of the increases of all series; NaN when any sample was invalid."""
        if self.invalid_points:
            return math.nan
        return math.fsum(self.increases.values())


def window_increase(
    chunks: Iterable[Mapping[SeriesKey, Sequence[float]]], *, baselines: Mapping[SeriesKey, float] | None = None
) -> CounterWindow:
    """Accumulate the chunks of one selector's range query into a CounterWindow."""
    window = CounterWindow.starting_from(baselines or {})
    for chunk in chunks:
        window.add_chunk(chunk)
    return window


def error_ratio(errors: float, total: float) -> float:
    """Return errors over total requests; NaN when there was no request or an input is NaN."""
    if math.isnan(errors) or math.isnan(total) or total <= 0:
        return math.nan
    return errors / total
