"""Verdict arithmetic: nothing judged, or anything unjudged, is never a pass."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.stream import WindowStats
from slo.model import Verdict, combine
from slo.recovery import client_clock, first_stable_time, slo_clock


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], Verdict.INCONCLUSIVE),
        ([Verdict.PASS], Verdict.PASS),
        ([Verdict.PASS, Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
        ([Verdict.INCONCLUSIVE, Verdict.FAIL], Verdict.FAIL),
        ([Verdict.PASS, Verdict.FAIL, Verdict.PASS], Verdict.FAIL),
    ],
)
def test_combine(verdicts: list[Verdict], expected: Verdict) -> None:
    assert combine(verdicts) == expected


def stats_from(seconds: dict[int, tuple[int, int]]) -> WindowStats:
    stats = WindowStats()
    stats.seconds = dict(seconds)
    stats.requests = sum(requests for requests, _ in seconds.values())
    stats.failures = sum(failures for _, failures in seconds.values())
    return stats


def test_client_clock_stops_at_start_of_stable_run() -> None:
    # Injection at t=100.5; bad seconds 100-102, good from 103 on.
    seconds = {100: (50, 30), 101: (50, 40), 102: (50, 10), 103: (50, 0), 104: (50, 0), 105: (50, 0), 106: (50, 0)}

    result = client_clock(
        fault_id="f", stats=stats_from(seconds), injected_wall=100.5, min_success_ratio=0.99, stability_s=3,
        limit_s=10, observed_until_wall=110,
    )  # fmt: skip

    assert result.verdict == Verdict.PASS
    assert result.measured_s == pytest.approx(2.5)


def test_client_clock_restarts_after_a_relapse() -> None:
    seconds = {100: (50, 0), 101: (50, 20), 102: (50, 0), 103: (50, 0), 104: (50, 0)}

    result = client_clock(
        fault_id="f", stats=stats_from(seconds), injected_wall=100.0, min_success_ratio=0.99, stability_s=3,
        limit_s=10, observed_until_wall=110,
    )  # fmt: skip

    assert result.measured_s == pytest.approx(2.0)


def test_client_clock_without_recovery_fails() -> None:
    seconds = {100: (50, 5), 101: (50, 5), 102: (50, 5)}

    result = client_clock(
        fault_id="f", stats=stats_from(seconds), injected_wall=100.0, min_success_ratio=0.99, stability_s=2,
        limit_s=10, observed_until_wall=103,
    )  # fmt: skip

    assert result.verdict == Verdict.FAIL
    assert result.measured_s is None


def test_client_clock_without_data_is_inconclusive() -> None:
    result = client_clock(
        fault_id="f", stats=stats_from({}), injected_wall=100.0, min_success_ratio=0.99, stability_s=2,
        limit_s=10, observed_until_wall=103,
    )  # fmt: skip

    assert result.verdict == Verdict.INCONCLUSIVE


def test_client_clock_never_exceeds_observed_time() -> None:
    seconds = {100: (50, 50), 101: (50, 50), 102: (50, 0), 103: (50, 0)}

    result = client_clock(
        fault_id="f", stats=stats_from(seconds), injected_wall=100.0, min_success_ratio=0.99, stability_s=2,
        limit_s=10, observed_until_wall=101.5,
    )  # fmt: skip

    assert result.measured_s is not None
    assert result.measured_s <= 1.5


def test_first_stable_time_needs_the_full_stability_period() -> None:
    points = [(0.0, 0.5), (1.0, 1.0), (2.0, 1.0), (3.0, 0.2), (4.0, 1.0), (5.0, 1.0), (6.0, 1.0), (7.0, 1.0)]

    assert first_stable_time(points, threshold=0.99, stability_s=3) == 4.0
    assert first_stable_time(points, threshold=0.99, stability_s=4) is None


def test_first_stable_time_treats_nan_and_gaps_as_unknown() -> None:
    with_nan = [(0.0, 1.0), (1.0, math.nan), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)]
    with_gap = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (9.0, 1.0), (10.0, 1.0), (11.0, 1.0)]

    assert first_stable_time(with_nan, threshold=0.99, stability_s=2) == 2.0
    assert first_stable_time(with_gap, threshold=0.99, stability_s=2) == 0.0
    assert first_stable_time(with_gap, threshold=0.99, stability_s=3) is None


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=2, max_size=60), st.integers(1, 10))
def test_slo_clock_never_exceeds_observed_time(values: list[float], stability_s: int) -> None:
    points = [(100.0 + index, value) for index, value in enumerate(values)]
    observed_until = points[-1][0]

    result = slo_clock(
        fault_id="f", points=points, injected_wall=100.0, min_success_ratio=0.9, stability_s=stability_s,
        limit_s=30, observed_until_wall=observed_until, query="q",
    )  # fmt: skip

    if result.measured_s is not None:
        assert 0.0 <= result.measured_s <= observed_until - 100.0
    else:
        assert result.verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE)
        assert result.verdict == (Verdict.INCONCLUSIVE if observed_until - 100.0 < 30 else Verdict.FAIL)
