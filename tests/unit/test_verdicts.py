"""Verdict arithmetic: nothing judged, or anything unjudged, is never a pass."""

from __future__ import annotations

import pytest

from loadtests.stream import WindowStats
from slo.model import Verdict, combine
from slo.recovery import client_clock


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
