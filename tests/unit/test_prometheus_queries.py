"""PromQL built for SLOs, the range plan of long windows, and checks made before any query."""

from __future__ import annotations

import pytest

from slo.model import Phase, SloResult, SloSpec, Source, Verdict
from slo.prometheus import (
    PrometheusSource,
    baseline_query,
    bucket_increase_query,
    coverage_query,
    quantile_query,
)
from slo.ranges import MAX_POINTS_PER_SERIES, split_range
from tests.conftest import free_port

DAY_S = 86_400
START = 1_800_000_000.25


def source(*, scrape_interval_s: float = 1.0, step_s: float | None = None) -> PrometheusSource:
    # Nothing listens on a fresh free port: a test that reaches the network fails loudly.
    return PrometheusSource(
        f"http://127.0.0.1:{free_port()}",
        scrape_interval_s=scrape_interval_s,
        coverage_selector='up{job="haproxy"}',
        step_s=step_s,
    )


def lb_spec(**fields: object) -> SloSpec:
    return SloSpec.model_validate(
        {
            "name": "lb",
            "kind": "availability",
            "source": "prometheus",
            "phases": ["baseline"],
            "min_success_ratio": 0.99,
            "prometheus": {
                "errors": 'haproxy_frontend_http_responses_total{proxy="lb",code="5xx"}',
                "total": 'haproxy_frontend_http_responses_total{proxy="lb"}',
            },
            **fields,
        }
    )


def test_latency_query_sums_bucket_increases_by_le() -> None:
    query = quantile_query(0.99, 'x_bucket{endpoint="/work"}', 20)

    assert query == 'histogram_quantile(0.99, sum by (le) (increase(x_bucket{endpoint="/work"}[20s])))'
    assert bucket_increase_query('x_bucket{endpoint="/work"}', 20) in query


def test_coverage_query_counts_scrapes_within_max_gap() -> None:
    assert coverage_query('up{job="haproxy"}', 3.0) == 'count_over_time(up{job="haproxy"}[3000ms])'


def test_baseline_query_looks_back_beyond_staleness() -> None:
    assert baseline_query("x_total", 3600.0) == "last_over_time(x_total[3600s])"


@pytest.mark.parametrize(
    ("scrape_interval_s", "step_s", "span_s", "queries"),
    [
        (1, None, 20, 1),
        (1, None, DAY_S, 8),
        (15, None, 3 * DAY_S, 2),
        (1, 60, 7 * DAY_S, 1),
    ],
)
def test_long_window_is_split_under_point_limit(
    scrape_interval_s: float, step_s: float | None, span_s: int, queries: int
) -> None:
    planned = source(scrape_interval_s=scrape_interval_s, step_s=step_s).plan(START, START + span_s)

    chunks = split_range(planned)

    assert len(chunks) == queries
    assert planned.start_s <= START
    assert planned.end_s >= START + span_s
    for chunk in chunks:
        assert chunk.points <= MAX_POINTS_PER_SERIES


def test_scrape_gap_limit_grows_with_step() -> None:
    assert source().max_scrape_gap_s == 3.0
    assert source(step_s=10).max_scrape_gap_s == 20.0


def test_short_baseline_lookback_is_rejected() -> None:
    with pytest.raises(ValueError, match="baseline_lookback_s"):
        PrometheusSource("http://127.0.0.1:1", scrape_interval_s=1, coverage_selector="up", baseline_lookback_s=60)


def test_window_under_two_scrapes_is_inconclusive() -> None:
    result = source(scrape_interval_s=1).evaluate(lb_spec(), Phase.BASELINE, start=START, end=START + 1.5)

    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.measured is None
    assert "shorter than two scrape intervals" in result.reason


def test_client_spec_is_inconclusive_at_prometheus() -> None:
    spec = SloSpec(name="c", kind="availability", phases=[Phase.BASELINE], min_success_ratio=0.9)

    result = source().evaluate(spec, Phase.BASELINE, start=START, end=START + 60)

    assert result.verdict == Verdict.INCONCLUSIVE
    assert "no Prometheus selectors" in result.reason


def test_failure_message_states_value_limit_phase_source_and_query() -> None:
    result = SloResult(
        slo="lb",
        phase=Phase.CHAOS,
        source=Source.PROMETHEUS,
        verdict=Verdict.FAIL,
        objective=lb_spec().objective_text(),
        measured=0.9312,
        window_start=START,
        window_end=START + 20,
        reason="Prometheus counted 69 errors in 1003 requests",
        query='errors: x_total{code="5xx"}; total: x_total',
    )

    message = result.message()

    assert "FAIL" in message
    assert "measured 0.9312" in message
    assert "success ratio >= 0.99" in message
    assert "phase chaos" in message
    assert "source prometheus" in message
    assert 'query: errors: x_total{code="5xx"}; total: x_total' in message
