"""Per-second statistics records and their latency histograms.

Both sides use this module: the Locust plugin builds records, and the harness reads
them. It imports nothing from Locust, because importing Locust patches the interpreter
with gevent, which the harness process must never be.
"""

from __future__ import annotations

import base64
import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from pydantic import BaseModel

STATS_DIR_VARIABLE = "STORMGATE_STATS_DIR"
"""Environment variable naming the folder the plugin writes ``stats-*.jsonl`` files to."""
HISTOGRAM_MIN_US = 1
HISTOGRAM_MAX_US = 3_600_000_000
HISTOGRAM_DIGITS = 3
"""Significant digits of the HDR histograms: values are stored to within 0.1%."""
CONNECTION_REFUSED_KIND = "ConnectionRefusedError"


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HISTOGRAM_MIN_US, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


def to_microseconds(response_time_ms: float) -> int:
    """Convert Locust's float milliseconds to whole microseconds inside the histogram's range."""
    return max(HISTOGRAM_MIN_US, min(HISTOGRAM_MAX_US, round(response_time_ms * 1000)))


def failure_kind(exception: BaseException, response: Any) -> str:
    """Name a failure the way an SLO report should show it: HTTP status or exception class."""
    status = getattr(response, "status_code", 0) or 0
    if status:
        return f"HTTP {status}"
    return type(exception).__name__


@dataclass
class EndpointSecond:
    """Requests of one endpoint in one second, as the plugin collects them."""

    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram = field(default_factory=new_histogram)
    min_us: int = 0
    max_us: int = 0

    def record(self, response_time_ms: float, failure: str | None) -> None:
        value_us = to_microseconds(response_time_ms)
        self.histogram.record_value(value_us)
        self.min_us = value_us if self.requests == 0 else min(self.min_us, value_us)
        self.max_us = max(self.max_us, value_us)
        self.requests += 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "histogram": base64.b64encode(self.histogram.encode()).decode("ascii") if self.requests else "",
            "min_us": self.min_us,
            "max_us": self.max_us,
        }


class EndpointRecord(BaseModel):
    requests: int
    failures: dict[str, int]
    histogram: str
    """Base64 of the compressed HDR histogram of latencies in microseconds; empty without requests."""
    min_us: int = 0
    """Exact smallest latency of the second in microseconds; 0 without requests."""
    max_us: int = 0
    """Exact largest latency of the second in microseconds; 0 without requests."""

    def decode_histogram(self) -> HdrHistogram | None:
        if not self.histogram:
            return None
        return HdrHistogram.decode(base64.b64decode(self.histogram))


class SecondRecord(BaseModel):
    """Statistics of one Locust process for the requests that started in one wall-clock second."""

    ts: int
    """Start of the second, in seconds since the Unix epoch (UTC)."""
    pid: int
    users: int
    endpoints: dict[str, EndpointRecord]
    source: str = ""
    """Process that sent the requests: ``<hostname>:<pid>``; older records leave it empty."""
    cpu_percent: float | None = None
    """CPU use of that Locust process over the last second, in percent of one core."""
    late: bool = False
    """Whether this record adds requests that started in `ts` but completed after the
    regular record for `ts` was written. A late record has 0 users and no CPU figure, so it
    adds only to request counts and latencies; the same source has a regular record for
    every second, late or not."""

    @property
    def source_key(self) -> str:
        return self.source or str(self.pid)


def nearest_rank(count: int, quantile: float) -> int:
    """Return the 1-based rank of the nearest-rank quantile among `count` sorted samples."""
    # The small tolerance keeps a product such as 0.29 * 100 = 28.999999999999996 at rank 29.
    return min(count, max(1, math.ceil(quantile * count - 1e-9)))


def cumulative_buckets(histogram: HdrHistogram) -> tuple[list[int], list[int]]:
    """Return the top value of every non-empty bucket in ascending order and the running sample count."""
    values: list[int] = []
    cumulative: list[int] = []
    total = 0
    # One pass over the raw counts; hdrh's own iterators take a Python call per bucket and step.
    for index, count in enumerate(histogram.counts[: histogram.counts_len]):
        if count:
            total += count
            values.append(histogram.get_highest_equivalent_value(histogram.get_value_from_index(index)))
            cumulative.append(total)
    return values, cumulative


def quantile_us(buckets: tuple[list[int], list[int]], quantile: float, *, min_us: int, max_us: int) -> int:
    """Return the nearest-rank latency at `quantile` in microseconds, clamped to the exact range.

    `buckets` comes from `cumulative_buckets`. HDR keeps the top of the bucket a sample fell
    into, which can lie up to 0.1% above the sample. The lowest and highest non-empty buckets
    contain the exact min and max, so a rank that falls into one of them returns that exact
    value: one sample, two samples and all-equal samples come out exact, and no result
    exceeds the max.
    """
    values, cumulative = buckets
    if not cumulative:
        raise ValueError("quantile_us needs a histogram with at least one sample")
    rank = nearest_rank(cumulative[-1], quantile)
    index = bisect.bisect_left(cumulative, rank)
    if index == 0:
        return min_us
    if index == len(values) - 1:
        return max_us
    return max(min_us, min(max_us, values[index]))


@dataclass
class WindowStats:
    """Client statistics over a time window, merged over processes and endpoints."""

    requests: int = 0
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    seconds: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Requests and failures per wall-clock second in which the requests started."""
    histogram: HdrHistogram = field(default_factory=new_histogram)
    min_us: int = 0
    max_us: int = 0
    _buckets: tuple[int, tuple[list[int], list[int]]] | None = field(default=None, repr=False, compare=False)
    """Cache of `cumulative_buckets`, keyed by the histogram's sample count when it was built."""

    @property
    def success_ratio(self) -> float:
        """Successful requests over all requests; NaN when there were none."""
        if self.requests == 0:
            return math.nan
        return (self.requests - self.failures) / self.requests

    def latency_ms(self, quantile: float) -> float:
        """Latency at the quantile in [0, 1] in milliseconds (nearest rank); NaN without requests."""
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {quantile}; write p99 as 0.99")
        total = self.histogram.get_total_count()
        if total == 0:
            return math.nan
        if self._buckets is None or self._buckets[0] != total:
            self._buckets = (total, cumulative_buckets(self.histogram))
        return quantile_us(self._buckets[1], quantile, min_us=self.min_us, max_us=self.max_us) / 1000.0


def aggregate(records: Iterable[SecondRecord]) -> WindowStats:
    stats = WindowStats()
    for record in records:
        requests, failures = stats.seconds.get(record.ts, (0, 0))
        for endpoint in record.endpoints.values():
            requests += endpoint.requests
            failed = sum(endpoint.failures.values())
            failures += failed
            stats.requests += endpoint.requests
            stats.failures += failed
            for kind, count in endpoint.failures.items():
                stats.failure_kinds[kind] = stats.failure_kinds.get(kind, 0) + count
            histogram = endpoint.decode_histogram()
            if histogram is None:
                continue
            had_samples = stats.histogram.get_total_count() > 0
            stats.histogram.add(histogram)
            # Records written before min_us and max_us existed fall back to the histogram's bounds.
            low_us = endpoint.min_us or histogram.get_min_value()
            high_us = endpoint.max_us or histogram.get_max_value()
            stats.min_us = min(stats.min_us, low_us) if had_samples else low_us
            stats.max_us = max(stats.max_us, high_us)
        stats.seconds[record.ts] = (requests, failures)
    return stats
