"""SLO arithmetic on synthetic sample arrays: counter resets, sums over series and chunks,
range splitting, scrape gaps, burn rates, and the validation of SLO specs."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loadtests.stream import WindowStats
from slo.burn import (
    budget_exhaustion_s,
    budget_used_share,
    burn_rate,
    burn_rate_for_budget_share,
    parse_duration_s,
)
from slo.client import evaluate_client
from slo.counters import CounterWindow, SeriesKey, counter_increase, error_ratio, series_key, window_increase
from slo.histogram import quantile_beyond_finite_buckets
from slo.model import Phase, SloSpec, Verdict
from slo.ranges import (
    MAX_POINTS_PER_SERIES,
    QueryRange,
    chunk_count,
    missing_steps,
    plan_range,
    query_step_s,
    split_range,
)

NO_DEADLINE = settings(deadline=None)
"""On a loaded 2-core machine a slow example is not a failure."""

DAY_S = 86_400
PERIOD_30D_S = 30 * DAY_S

# A counter's life as (increment, restarted before this scrape) per scrape interval.
counter_steps = st.lists(st.tuples(st.integers(0, 1_000), st.booleans()), max_size=200)


def observe(start_value: int, steps: list[tuple[int, bool]]) -> tuple[list[float], int]:
    """Return the scraped values of a counter and its true total increase.

    A restart is kept only when it makes the counter drop, because a restart that the next
    scrape cannot tell from growth is invisible to any method.
    """
    values: list[float] = []
    current = start_value
    true_increase = 0
    for increment, restarted in steps:
        if restarted and increment < current:
            current = increment
        else:
            current += increment
        true_increase += increment
        values.append(float(current))
    return values, true_increase


# ----- reset-aware increase -----


@NO_DEADLINE
@given(st.integers(0, 10_000), counter_steps)
def test_increase_equals_true_increase_across_restarts(start_value: int, steps: list[tuple[int, bool]]) -> None:
    values, true_increase = observe(start_value, steps)

    assert counter_increase(values, start_value=start_value) == true_increase


@NO_DEADLINE
@given(st.floats(0, 1e9), st.lists(st.floats(0, 1e9), max_size=100))
def test_increase_is_never_negative(start_value: float, values: list[float]) -> None:
    assert counter_increase(values, start_value=start_value) >= 0.0


@NO_DEADLINE
@given(st.integers(0, 10_000), counter_steps, st.integers(0, 199))
def test_nan_sample_makes_increase_nan(start_value: int, steps: list[tuple[int, bool]], position: int) -> None:
    values, _ = observe(start_value, steps)
    values.insert(min(position, len(values)), math.nan)

    assert math.isnan(counter_increase(values, start_value=start_value))


def test_negative_sample_makes_increase_nan() -> None:
    assert math.isnan(counter_increase([5.0, -1.0, 7.0]))


def test_empty_window_has_no_increase() -> None:
    window = window_increase([])

    assert counter_increase([]) == 0.0
    assert window.series_count == 0
    assert window.total == 0.0


def test_restart_counts_new_value_from_zero() -> None:
    # 100 before the window, +20, then a restart that counted 7 before the next scrape, then +3.
    assert counter_increase([110.0, 120.0, 7.0, 10.0], start_value=100.0) == 20.0 + 7.0 + 3.0


def test_series_created_in_window_counts_from_zero() -> None:
    window = window_increase([{(("code", "500"),): [2.0, 5.0]}])

    assert window.total == 5.0


# ----- sums over series and chunks -----


@NO_DEADLINE
@given(
    st.lists(st.tuples(st.integers(0, 1_000), counter_steps), min_size=1, max_size=5),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_chunked_sum_equals_unsplit_sum(series: list[tuple[int, list[tuple[int, bool]]]], cuts: list[int]) -> None:
    arrays: dict[SeriesKey, list[float]] = {}
    baselines: dict[SeriesKey, float] = {}
    expected = 0
    for index, (start_value, steps) in enumerate(series):
        key = (("instance", str(index)),)
        arrays[key], true_increase = observe(start_value, steps)
        baselines[key] = float(start_value)
        expected += true_increase
    borders = sorted({0, *cuts, 201})
    chunks = [
        {key: values[left:right] for key, values in arrays.items()} for left, right in itertools.pairwise(borders)
    ]

    assert window_increase(chunks, baselines=baselines).total == expected
    assert window_increase([arrays], baselines=baselines).total == expected


def test_restarted_instance_does_not_distort_ratio() -> None:
    # Three instances; "b" restarts halfway. Each serves 100 requests per scrape, 5 of them failing.
    totals = {"a": [1000.0 + 100 * i for i in range(11)], "c": [3000.0 + 100 * i for i in range(11)]}
    totals["b"] = [2000.0 + 100 * i for i in range(5)] + [100.0 * i for i in range(1, 7)]
    errors = {name: [value / 20 for value in values] for name, values in totals.items()}

    def window(arrays: dict[str, list[float]]) -> CounterWindow:
        baselines: dict[SeriesKey, float] = {(("instance", name),): values[0] for name, values in arrays.items()}
        return window_increase(
            [{(("instance", name),): values for name, values in arrays.items()}], baselines=baselines
        )

    requests = window(totals).total
    failures = window(errors).total
    naive_requests = sum(values[-1] for values in totals.values()) - sum(values[0] for values in totals.values())

    assert requests == 3000.0
    assert error_ratio(failures, requests) == pytest.approx(0.05)
    assert naive_requests < 0.6 * requests  # what summing before finding resets would report


def test_ratio_is_sum_over_sum() -> None:
    # A busy instance with 1 % errors and an idle one with 50 %: the service failed 1.5 % of requests.
    errors = window_increase([{(("i", "busy"),): [0.0, 10.0], (("i", "idle"),): [0.0, 5.0]}])
    totals = window_increase([{(("i", "busy"),): [0.0, 1000.0], (("i", "idle"),): [0.0, 10.0]}])

    assert error_ratio(errors.total, totals.total) == pytest.approx(15 / 1010)


def test_nan_window_total_is_nan() -> None:
    window = window_increase([{(("i", "a"),): [1.0, math.nan, 3.0]}])

    assert window.invalid_points == 1
    assert math.isnan(window.total)
    assert math.isnan(error_ratio(window.total, 10.0))


def test_ratio_without_requests_is_nan() -> None:
    assert math.isnan(error_ratio(0.0, 0.0))


def test_series_key_ignores_metric_name() -> None:
    assert series_key({"__name__": "x_total", "job": "a"}) == series_key({"job": "a"})


# ----- range planning and splitting -----


@NO_DEADLINE
@given(
    st.integers(1_600_000_000, 1_900_000_000),
    st.integers(0, 30 * DAY_S),
    st.integers(1, 120),
    st.integers(1_000, MAX_POINTS_PER_SERIES),
)
def test_split_covers_every_point_once(start_s: int, span_s: int, step_s: int, max_points: int) -> None:
    whole = QueryRange(start_s, start_s + span_s - span_s % step_s, step_s)

    chunks = split_range(whole, max_points=max_points)

    assert len(chunks) == chunk_count(whole.points, max_points=max_points)
    assert chunks[0].start_s == whole.start_s
    assert chunks[-1].end_s == whole.end_s
    assert sum(chunk.points for chunk in chunks) == whole.points
    for before, after in itertools.pairwise(chunks):
        assert after.start_s == before.end_s + step_s
    for chunk in chunks:
        assert chunk.points <= max_points


@pytest.mark.parametrize(
    ("span_s", "step_s", "chunks"),
    [
        (20, 1, 1),
        (10_999, 1, 1),
        (11_000, 1, 2),
        (DAY_S, 1, 8),
        (7 * DAY_S, 1, 55),
        (7 * DAY_S, 15, 4),
        (30 * DAY_S, 60, 4),
    ],
)
def test_split_of_long_ranges_stays_under_prometheus_limit(span_s: int, step_s: int, chunks: int) -> None:
    parts = split_range(QueryRange(1_800_000_000, 1_800_000_000 + span_s, step_s))

    assert len(parts) == chunks
    for part in parts:
        # Prometheus rejects (end - start) / step > 11,000.
        assert (part.end_s - part.start_s) / part.step_s <= 11_000


@NO_DEADLINE
@given(st.floats(1_600_000_000, 1_900_000_000), st.floats(0, 7 * DAY_S), st.integers(1, 60))
def test_plan_range_covers_window(start: float, length_s: float, step_s: int) -> None:
    planned = plan_range(start, start + length_s, step_s)

    assert planned.start_s <= start < planned.start_s + 1
    assert planned.end_s >= start + length_s
    assert planned.end_s - (start + length_s) < step_s


def test_plan_range_rejects_reversed_window() -> None:
    with pytest.raises(ValueError, match="before its start"):
        plan_range(100.0, 50.0, 1)


@pytest.mark.parametrize(
    ("scrape_interval_s", "step_s", "expected"), [(1, None, 1), (0.5, None, 1), (15, None, 15), (1, 2.5, 3)]
)
def test_query_step_is_whole_seconds(scrape_interval_s: float, step_s: float | None, expected: int) -> None:
    assert query_step_s(scrape_interval_s, step_s) == expected


# ----- scrape coverage -----


@NO_DEADLINE
@given(st.integers(1, 2_000), st.integers(1, 60), st.sets(st.integers(0, 1_999)))
def test_missing_steps_are_found_as_runs(count: int, step_s: int, removed: set[int]) -> None:
    whole = QueryRange(1_800_000_000, 1_800_000_000 + (count - 1) * step_s, step_s)
    removed = {index for index in removed if index < count}
    present = [float(whole.start_s + index * step_s) for index in range(count) if index not in removed]

    runs = missing_steps(present, whole)

    found = {(point - whole.start_s) // step_s for first, last in runs for point in range(first, last + 1, step_s)}
    assert found == removed
    for before, after in itertools.pairwise(runs):
        assert after[0] > before[1] + step_s  # runs are separated by a present point


def test_range_without_any_point_is_one_run() -> None:
    assert missing_steps([], QueryRange(0, 60, 15)) == [(0, 60)]


# ----- burn rates and SLO periods -----


def test_burn_rate_of_budget_pace_is_one() -> None:
    assert burn_rate(0.001, 0.999) == pytest.approx(1.0)


def test_fast_burn_budget_share() -> None:
    rate = burn_rate(0.0144, 0.999)

    assert rate == pytest.approx(14.4)
    assert budget_used_share(rate, window_s=3600, period_s=PERIOD_30D_S) == pytest.approx(0.02)
    assert budget_used_share(rate, window_s=3600, period_s=7 * DAY_S) == pytest.approx(14.4 / 168)
    assert budget_exhaustion_s(rate, period_s=PERIOD_30D_S) == pytest.approx(50 * 3600)


@NO_DEADLINE
@given(
    st.floats(0.0, 1.0),
    st.floats(0.5, 0.99999),
    st.floats(1.0, 90 * DAY_S),
    st.sampled_from([7 * DAY_S, 28 * DAY_S, PERIOD_30D_S, 90 * DAY_S]),
    st.sampled_from([7 * DAY_S, 28 * DAY_S, PERIOD_30D_S, 90 * DAY_S]),
)
def test_budget_share_scales_with_period(
    ratio: float, target: float, window_s: float, period_a_s: int, period_b_s: int
) -> None:
    rate = burn_rate(ratio, target)

    share_a = budget_used_share(rate, window_s=window_s, period_s=period_a_s)
    share_b = budget_used_share(rate, window_s=window_s, period_s=period_b_s)

    # The burn rate is the same for any period; the share of the budget is not.
    assert share_a * period_a_s == pytest.approx(share_b * period_b_s)
    assert budget_used_share(rate, window_s=period_a_s, period_s=period_a_s) == pytest.approx(rate)
    if rate > 0:
        assert burn_rate_for_budget_share(share_a, window_s=window_s, period_s=period_a_s) == pytest.approx(rate)


def test_burn_rate_of_nan_window_is_nan() -> None:
    assert math.isnan(burn_rate(math.nan, 0.999))
    assert math.isnan(budget_exhaustion_s(math.nan, period_s=PERIOD_30D_S))


def test_no_errors_never_exhaust_budget() -> None:
    assert budget_exhaustion_s(0.0, period_s=PERIOD_30D_S) == math.inf


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * DAY_S), ("4w", 28 * DAY_S), ("1h30m", 5400), ("90s", 90), ("1y", 365 * DAY_S)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["30 days", "d30", "", "0d", "1.5d"])
def test_parse_duration_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(text)


# ----- histogram buckets -----


@pytest.mark.parametrize(
    ("quantile", "beyond"),
    [(0.5, False), (0.9, False), (0.95, True), (0.99, True)],
)
def test_quantile_beyond_finite_buckets(quantile: float, beyond: bool) -> None:
    # 90 of 100 observations lie at or below the highest finite bound of 2.5 s.
    buckets = {0.1: 50.0, 1.0: 80.0, 2.5: 90.0, math.inf: 100.0}

    assert quantile_beyond_finite_buckets(quantile, buckets) is beyond


# ----- SLO spec validation -----

BASE = {"name": "s", "phases": ["baseline"]}


INVALID_SPECS: list[tuple[dict[str, object], list[str]]] = [
    ({"kind": "availability", "min_success_ratio": 99}, ["min_success_ratio", "99", "write 0.99"]),
    ({"kind": "availability", "min_success_ratio": 0}, ["min_success_ratio", "got 0", "(0, 1]"]),
    ({"kind": "latency", "quantile": 99, "max_latency_ms": 500}, ["quantile", "99", "write 0.99"]),
    ({"kind": "latency", "quantile": 0.99, "max_latency_ms": -5}, ["max_latency_ms", "-5", "500"]),
    ({"kind": "burn-rate", "target": 1, "max_burn_rate": 2}, ["target is 1", "no error budget", "0.999"]),
    ({"kind": "burn-rate", "target": 99.9, "max_burn_rate": 2}, ["target", "99.9", "write 0.999"]),
    ({"kind": "burn-rate", "target": 0.99, "max_burn_rate": 0}, ["max_burn_rate", "got 0", "14.4"]),
    (
        {"kind": "burn-rate", "target": 0.99, "max_burn_rate": 2, "period": "30 days"},
        ["period", "'30 days'", "'30d'"],
    ),
    ({"kind": "burn-rate", "target": 0.99}, ["needs target", "max_burn_rate"]),
    (
        {"kind": "availability", "min_success_ratio": 0.9, "max_latency_ms": 5},
        ["max_latency_ms", "latency SLOs", "remove it"],
    ),
    (
        {"kind": "availability", "min_success_ratio": 0.9, "phases": ["warmup"]},
        ["warmup", "never judged", "remove it"],
    ),
    (
        {"kind": "availability", "min_success_ratio": 0.9, "phases": ["chaos", "chaos"]},
        ["chaos", "more than once"],
    ),
    (
        {
            "kind": "availability",
            "min_success_ratio": 0.9,
            "source": "prometheus",
            "prometheus": {"errors": "sum(rate(x_total[5m]))", "total": "x_total"},
        },
        ["prometheus.errors", "sum(rate(x_total[5m]))", "counter itself"],
    ),
    (
        {
            "kind": "availability",
            "min_success_ratio": 0.9,
            "source": "prometheus",
            "prometheus": {"errors": 'x_total{code="500"} or vector(0)', "total": "x_total"},
        },
        ["prometheus.errors", "or vector(0)", "counter itself"],
    ),
    ({"kind": "availability", "min_success_ratio": 0.9, "source": "prometheus"}, ["needs 'prometheus:"]),
    (
        {"kind": "latency", "quantile": 0.99, "max_latency_ms": 5, "source": "prometheus", "prometheus": {}},
        ["buckets"],
    ),
    (
        {
            "kind": "latency",
            "quantile": 0.99,
            "max_latency_ms": 5,
            "source": "prometheus",
            "prometheus": {"buckets": "http_duration_seconds"},
        },
        ["prometheus.buckets", "http_duration_seconds", "http_duration_seconds_bucket"],
    ),
    (
        {"kind": "availability", "min_success_ratio": 0.9, "prometheus": {"errors": "e", "total": "t"}},
        ["source: prometheus", "remove the block"],
    ),
]
"""Invalid SLO fields and the fragments their error must contain: field, value and fix."""


@pytest.mark.parametrize(("fields", "expected"), INVALID_SPECS, ids=[expected[0] for _, expected in INVALID_SPECS])
def test_invalid_spec_names_field_value_and_fix(fields: dict[str, object], expected: list[str]) -> None:
    with pytest.raises(ValidationError) as raised:
        SloSpec.model_validate({**BASE, **fields})

    for fragment in expected:
        assert fragment in str(raised.value)


def test_burn_rate_spec_defaults_to_thirty_day_period() -> None:
    spec = SloSpec.model_validate({**BASE, "kind": "burn-rate", "target": 0.999, "max_burn_rate": 14.4})

    assert spec.period_s == PERIOD_30D_S
    assert spec.objective_text() == "burn rate <= 14.4 (target 0.999, period 30d)"


def test_seven_day_period_is_parsed() -> None:
    spec = SloSpec.model_validate({**BASE, "kind": "burn-rate", "target": 0.999, "max_burn_rate": 6, "period": "7d"})

    assert spec.period_s == 7 * DAY_S


# ----- client statistics -----


def burn_spec(max_burn_rate: float, period: str | None = None) -> SloSpec:
    return SloSpec.model_validate(
        {**BASE, "kind": "burn-rate", "target": 0.99, "max_burn_rate": max_burn_rate, "period": period}
    )


@pytest.mark.parametrize(("max_burn_rate", "verdict"), [(5.0, Verdict.PASS), (4.9, Verdict.FAIL)])
def test_client_burn_rate_of_five_percent_errors(max_burn_rate: float, verdict: Verdict) -> None:
    stats = WindowStats(requests=2000, failures=100)

    result = evaluate_client(burn_spec(max_burn_rate), Phase.BASELINE, stats, start=0.0, end=3600.0)

    assert result.measured == pytest.approx(5.0)
    assert result.verdict == verdict


def test_client_budget_share_depends_on_period() -> None:
    stats = WindowStats(requests=2000, failures=100)

    thirty_days = evaluate_client(burn_spec(10.0), Phase.BASELINE, stats, start=0.0, end=3600.0)
    seven_days = evaluate_client(burn_spec(10.0, "7d"), Phase.BASELINE, stats, start=0.0, end=3600.0)

    assert thirty_days.budget_used_share == pytest.approx(5.0 / 720)
    assert seven_days.budget_used_share == pytest.approx(5.0 / 168)
    assert "of the 7d error budget" in seven_days.reason


def test_client_window_without_requests_is_inconclusive() -> None:
    result = evaluate_client(burn_spec(10.0), Phase.BASELINE, WindowStats(), start=0.0, end=60.0)

    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.measured is None
    assert "no request" in result.reason
