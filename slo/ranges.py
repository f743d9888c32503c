"""Time ranges of PromQL range queries: alignment, splitting, rate windows and scrape gaps.

Timestamps are UTC seconds since the Unix epoch. prometheus-api-client rounds the start
and end of a range query to whole seconds, so every range here is planned in whole
seconds with a whole-second step, and the points it asks for are exactly the points sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from stormgate.errors import UsageError

MAX_POINTS_PER_SERIES = 11_000
"""Points per series that one range query may return here. Prometheus (checked on 2.42)
rejects a query whose (end - start) / step exceeds 11,000, that is more than 11,001 points."""
MIN_SCRAPES_PER_RATE_WINDOW = 2
"""A rate or increase needs two samples in its window, so its window spans at least two scrapes."""


@dataclass(frozen=True)
class QueryRange:
    """The evaluation points start_s, start_s + step_s, ..., end_s of one range query."""

    start_s: int
    end_s: int
    step_s: int

    def __post_init__(self) -> None:
        if self.step_s < 1:
            raise UsageError(f"step_s must be at least 1 s, got {self.step_s}")
        if self.end_s < self.start_s or (self.end_s - self.start_s) % self.step_s:
            raise UsageError(
                f"range {self.start_s}..{self.end_s} must end on a step of {self.step_s} s after its start"
            )

    @property
    def points(self) -> int:
        return (self.end_s - self.start_s) // self.step_s + 1

    @property
    def span_s(self) -> int:
        return self.end_s - self.start_s


def query_step_s(scrape_interval_s: float, step_s: float | None = None) -> int:
    """Return the step of range queries: the given step or one scrape interval, in whole seconds.

    A step of one scrape interval sees every sample of a counter, so the increase lost at a
    restart is at most what the instance counted after its last scrape.
    """
    wanted_s = scrape_interval_s if step_s is None else step_s
    if not wanted_s > 0:
        raise UsageError(f"step must be positive, got {wanted_s!r} s")
    return max(1, math.ceil(wanted_s))


def plan_range(start: float, end: float, step_s: int) -> QueryRange:
    """Return the whole-second range from floor(start) to the first step at or after `end`."""
    if end < start:
        raise UsageError(f"window end {end} lies before its start {start}")
    first = math.floor(start)
    steps = math.ceil((end - first) / step_s)
    return QueryRange(first, first + steps * step_s, step_s)


def chunk_count(points: int, *, max_points: int = MAX_POINTS_PER_SERIES) -> int:
    """Return how many range queries are needed for `points` points per series."""
    if max_points < 1:
        raise UsageError(f"max_points must be at least 1, got {max_points}")
    return max(1, math.ceil(points / max_points))


def split_range(query_range: QueryRange, *, max_points: int = MAX_POINTS_PER_SERIES) -> list[QueryRange]:
    """Split a range into consecutive chunks of at most `max_points` points each.

    Every point of the range lies in exactly one chunk, in time order, so per-chunk sums
    add up to the sum over the whole range.
    """
    if max_points < 1:
        raise UsageError(f"max_points must be at least 1, got {max_points}")
    step_s = query_range.step_s
    chunk_span_s = (max_points - 1) * step_s
    chunks = []
    chunk_start = query_range.start_s
    while chunk_start <= query_range.end_s:
        chunk_end = min(chunk_start + chunk_span_s, query_range.end_s)
        chunks.append(QueryRange(chunk_start, chunk_end, step_s))
        chunk_start = chunk_end + step_s
    return chunks


def min_rate_window_s(scrape_interval_s: float) -> float:
    return MIN_SCRAPES_PER_RATE_WINDOW * scrape_interval_s


def missing_steps(timestamps: Iterable[float], query_range: QueryRange) -> list[tuple[int, int]]:
    """Return the runs of evaluation points of `query_range` that have no point in `timestamps`.

    Each run is (first missing point, last missing point). A range query leaves out a point
    where its expression has no value, such as `count_over_time` over a stretch without samples.
    """
    present = {round(stamp) for stamp in timestamps}
    runs: list[tuple[int, int]] = []
    for point in range(query_range.start_s, query_range.end_s + 1, query_range.step_s):
        if point in present:
            continue
        if runs and runs[-1][1] == point - query_range.step_s:
            runs[-1] = (runs[-1][0], point)
        else:
            runs.append((point, point))
    return runs
