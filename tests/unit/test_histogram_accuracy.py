"""Percentiles from the per-second HDR records match exact nearest-rank percentiles within 1%."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.records import EndpointRecord, EndpointSecond, SecondRecord, WindowStats, aggregate, nearest_rank

QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
RELATIVE_TOLERANCE = 0.01
MIN_SAMPLE_MS = 0.05
"""Smallest sample tested: records hold whole microseconds, so 0.5 µs rounding stays within 1% above 50 µs."""


def exact_percentile(samples: list[float], quantile: float) -> float:
    ordered = sorted(samples)
    return ordered[nearest_rank(len(ordered), quantile) - 1]


def window_of(groups: list[list[float]]) -> WindowStats:
    """Record each group as one process's second, send it through JSON as the plugin does, and merge."""
    records = []
    for index, group in enumerate(groups):
        bucket = EndpointSecond()
        for sample in group:
            bucket.record(sample, None)
        line = json.loads(json.dumps({"ts": 1_700_000_000 + index // 2, "pid": index, "users": 1,
                                      "endpoints": {"/work": bucket.to_json()} if group else {}}))  # fmt: skip
        records.append(SecondRecord.model_validate(line))
    return aggregate(records)


def assert_close(measured_ms: float, exact_ms: float) -> None:
    assert abs(measured_ms - exact_ms) <= RELATIVE_TOLERANCE * exact_ms, (measured_ms, exact_ms)


samples_ms = st.floats(min_value=MIN_SAMPLE_MS, max_value=600_000.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(st.lists(samples_ms, max_size=80), min_size=1, max_size=4).filter(lambda g: any(g)))
def test_percentiles_within_one_percent(groups: list[list[float]]) -> None:
    samples = [sample for group in groups for sample in group]
    stats = window_of(groups)

    for quantile in QUANTILES:
        assert_close(stats.latency_ms(quantile), exact_percentile(samples, quantile))


@settings(max_examples=200, deadline=None)
@given(samples=st.lists(samples_ms, min_size=1, max_size=200))
def test_percentiles_monotone_and_bounded(samples: list[float]) -> None:
    stats = window_of([samples])
    grid = [i / 200 for i in range(201)]
    values = [stats.latency_ms(quantile) for quantile in grid]

    assert values == sorted(values)
    assert values[-1] <= round(max(samples) * 1000) / 1000
    assert values[0] >= round(min(samples) * 1000) / 1000


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param([12.5], id="n=1"),
        pytest.param([3.0, 900.0], id="n=2"),
        pytest.param([7.777] * 50, id="all-equal"),
        pytest.param([1.001, 1.002, 1.003], id="within-one-bucket"),
        pytest.param([0.05, 3_600_000.0], id="extremes"),
    ],
)
def test_small_sample_percentiles(samples: list[float]) -> None:
    stats = window_of([samples])

    for quantile in QUANTILES:
        assert_close(stats.latency_ms(quantile), exact_percentile(samples, quantile))


def test_single_sample_is_exact() -> None:
    stats = window_of([[12.345]])

    assert stats.latency_ms(0.5) == 12.345
    assert stats.latency_ms(1.0) == 12.345


def test_two_samples_split_at_median() -> None:
    stats = window_of([[3.0, 900.0]])

    assert stats.latency_ms(0.5) == 3.0
    assert stats.latency_ms(0.51) == 900.0


def test_all_equal_samples_are_exact() -> None:
    stats = window_of([[7.777] * 10, [7.777] * 5])

    assert {stats.latency_ms(quantile) for quantile in QUANTILES} == {7.777}


def test_no_requests_gives_nan() -> None:
    assert math.isnan(WindowStats().latency_ms(0.99))


@pytest.mark.parametrize("quantile", [-0.1, 1.5, 99.0])
def test_quantile_outside_unit_interval_rejected(quantile: float) -> None:
    with pytest.raises(ValueError, match="quantile must lie in"):
        window_of([[1.0]]).latency_ms(quantile)


def test_failures_counted_by_kind() -> None:
    bucket = EndpointSecond()
    bucket.record(5.0, "HTTP 500")
    bucket.record(6.0, "HTTP 500")
    bucket.record(7.0, "ConnectionRefusedError")
    bucket.record(8.0, None)
    record = SecondRecord(ts=1, pid=1, users=1, endpoints={"/work": EndpointRecord(**bucket.to_json())})

    stats = aggregate([record])

    assert stats.requests == 4
    assert stats.failures == 3
    assert stats.failure_kinds == {"HTTP 500": 2, "ConnectionRefusedError": 1}
    assert stats.seconds == {1: (4, 3)}
