"""Evaluation of SLOs from Prometheus with PromQL range queries over the phase window.

A Prometheus verdict is honest or it is inconclusive: an unreachable server, a selector that
matches no series, NaN, a window shorter than two scrapes, or a gap in the scrapes never
passes.

Ratios (availability, burn rate) come from the raw counter samples of every series in the
window: increases are computed per series with restarts taken into account, then summed,
and the errors' sum is divided by the requests' sum. Latency comes from `histogram_quantile`
over the bucket increases of the whole window, summed by `le`.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime

from slo.burn import budget_used_share, burn_rate
from slo.counters import CounterWindow, error_ratio, series_key
from slo.histogram import highest_finite_bound, observation_count, parse_bound, quantile_beyond_finite_buckets
from slo.model import DEFAULT_PERIOD, Phase, PrometheusSelectors, SloResult, SloSpec, Source, Verdict
from slo.promql import QUERY_RETRIES, QUERY_TIMEOUT_S, PrometheusClient
from slo.ranges import QueryRange, min_rate_window_s, missing_steps, plan_range, query_step_s, split_range
from stormgate.errors import InconclusiveResult, TargetUnreachable, UsageError

logger = logging.getLogger(__name__)

MAX_SCRAPE_GAP_INTERVALS = 3
"""Scrape intervals without a scrape of the coverage series after which the window is inconclusive."""
BASELINE_LOOKBACK_S = 3600.0
"""How far before the window to look for a series' last value. A series seen in that time
continues from its last value (also after a scrape outage); one not seen is new and counts
from zero. It must exceed Prometheus's 5-minute lookback of range query points."""
PROMQL_LOOKBACK_S = 300.0
"""Prometheus's default lookback delta: a range query point shows the last sample this old or newer."""


def coverage_query(selector: str, max_gap_s: float) -> str:
    """PromQL that has a point wherever `selector` was scraped in the `max_gap_s` before it."""
    return f"count_over_time({selector}[{max_gap_s * 1000:.0f}ms])"


def baseline_query(selector: str, lookback_s: float) -> str:
    """PromQL of each series' last value within `lookback_s`, also for series stale at that time."""
    return f"last_over_time({selector}[{lookback_s:.0f}s])"


def bucket_increase_query(buckets: str, window_s: int) -> str:
    """PromQL of the histogram's bucket increases over `window_s`, summed over series by `le`."""
    return f"sum by (le) (increase({buckets}[{window_s}s]))"


def quantile_query(quantile: float, buckets: str, window_s: int) -> str:
    return f"histogram_quantile({quantile:g}, {bucket_increase_query(buckets, window_s)})"


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels_text(labels: dict[str, str] | tuple[tuple[str, str], ...]) -> str:
    pairs = labels.items() if isinstance(labels, dict) else labels
    return "{" + ", ".join(f'{name}="{value}"' for name, value in pairs) + "}"


class PrometheusSource:
    """A Prometheus server and the scrape interval its targets use."""

    def __init__(
        self,
        url: str,
        *,
        scrape_interval_s: float,
        coverage_selector: str,
        step_s: float | None = None,
        timeout_s: float = QUERY_TIMEOUT_S,
        retries: int = QUERY_RETRIES,
        baseline_lookback_s: float = BASELINE_LOOKBACK_S,
    ) -> None:
        if not scrape_interval_s > 0:
            raise UsageError(f"scrape_interval_s must be positive, got {scrape_interval_s!r}")
        if baseline_lookback_s <= PROMQL_LOOKBACK_S:
            raise UsageError(
                f"baseline_lookback_s must exceed Prometheus's lookback of {PROMQL_LOOKBACK_S:g} s, "
                f"got {baseline_lookback_s!r}; use for example {BASELINE_LOOKBACK_S:g}"
            )
        self.url = url
        self.scrape_interval_s = scrape_interval_s
        self.coverage_selector = coverage_selector
        """Selector of a series scraped with the SLO's series, such as `up{job="haproxy"}`."""
        self.step_s = query_step_s(scrape_interval_s, step_s)
        """Step of the range queries, in whole seconds."""
        self.max_scrape_gap_s = max(MAX_SCRAPE_GAP_INTERVALS * scrape_interval_s, 2.0 * self.step_s)
        self.baseline_lookback_s = baseline_lookback_s
        self.promql = PrometheusClient(url, timeout_s=timeout_s, retries=retries)
        self.client = self.promql.connection
        """The prometheus-api-client connection, for callers that run PromQL of their own."""

    def wait_for_scrape_after(self, at: float) -> None:
        """Sleep until Prometheus has scraped everything up to the UTC timestamp `at`."""
        delay_s = at + 2 * self.scrape_interval_s - time.time()
        if delay_s > 0:
            time.sleep(delay_s)

    def plan(self, start: float, end: float) -> QueryRange:
        """Return the whole-second range of the window [start, end]; `split_range` cuts it into queries."""
        return plan_range(start, end, self.step_s)

    def evaluate(self, spec: SloSpec, phase: Phase, *, start: float, end: float) -> SloResult:
        """Judge one SLO over the window [start, end] (UTC epoch seconds) from Prometheus."""
        result = SloResult(
            slo=spec.name,
            phase=phase,
            source=Source.PROMETHEUS,
            verdict=Verdict.INCONCLUSIVE,
            objective=spec.objective_text(),
            measured=None,
            window_start=start,
            window_end=end,
        )
        selectors = spec.prometheus
        if spec.source != Source.PROMETHEUS or selectors is None:
            result.reason = f"SLO {spec.name!r} has no Prometheus selectors; give a 'prometheus' block"
            return result
        min_window_s = min_rate_window_s(self.scrape_interval_s)
        if end - start < min_window_s:
            result.reason = (
                f"the window of {end - start:.1f} s is shorter than two scrape intervals "
                f"({min_window_s:g} s); lengthen the phase"
            )
            return result

        query_range = self.plan(start, end)
        self.wait_for_scrape_after(query_range.end_s)
        try:
            self.check_coverage(query_range)
            if spec.kind == "latency":
                self.judge_latency(spec, selectors, query_range, result)
            else:
                self.judge_ratio(spec, selectors, query_range, result)
        except (TargetUnreachable, InconclusiveResult) as error:
            result.verdict = Verdict.INCONCLUSIVE
            result.measured = None
            result.reason = str(error)
        if result.verdict == Verdict.INCONCLUSIVE:
            logger.warning("SLO %s in phase %s is inconclusive: %s", spec.name, phase.value, result.reason)
        return result

    # ----- coverage -----

    def check_coverage(self, query_range: QueryRange) -> None:
        """Raise InconclusiveResult unless Prometheus scraped the coverage series all through the window."""
        query = coverage_query(self.coverage_selector, self.max_scrape_gap_s)
        stamps: dict[tuple[tuple[str, str], ...], list[float]] = {}
        for chunk in split_range(query_range):
            for series in self.promql.query_range(query, chunk):
                stamps.setdefault(series_key(series.labels), []).extend(series.timestamps)
        if not stamps:
            raise InconclusiveResult(
                f"the coverage selector {self.coverage_selector} matched no series between "
                f"{utc_text(query_range.start_s)} and {utc_text(query_range.end_s)}; "
                "give a selector of a series that Prometheus scrapes with the SLO's series"
            )
        for key, points in sorted(stamps.items()):
            gaps = missing_steps(points, query_range)
            if gaps:
                # A point is missing where no scrape happened in the max_scrape_gap_s before it.
                first, last = max(gaps, key=lambda gap: gap[1] - gap[0])
                raise InconclusiveResult(
                    f"Prometheus has a gap of more than {self.max_scrape_gap_s:g} s in the scrapes of "
                    f"{self.coverage_selector} (series {labels_text(key)}): no scrape in the "
                    f"{self.max_scrape_gap_s:g} s before each point from {utc_text(first)} to {utc_text(last)}. "
                    "It was down or overloaded, so the window's data is incomplete"
                )

    # ----- availability and burn rate -----

    def count(self, selector: str, query_range: QueryRange) -> CounterWindow:
        """Return the reset-aware increases of every series of `selector` over the range.

        NOTE: a series not seen within `baseline_lookback_s` before the window counts from zero.
        That is right for new instances and for error series created at the first error, but
        inflates the count of a long-running target that Prometheus starts to scrape mid-window.
        """
        at_start = QueryRange(query_range.start_s, query_range.start_s, query_range.step_s)
        baselines = {
            series_key(series.labels): series.values[-1]
            for series in self.promql.query_range(baseline_query(selector, self.baseline_lookback_s), at_start)
            if series.values
        }
        window = CounterWindow.starting_from(baselines)
        for chunk in split_range(query_range):
            series_list = self.promql.query_range(selector, chunk)
            window.add_chunk({series_key(series.labels): series.values for series in series_list})
        return window

    def judge_ratio(
        self, spec: SloSpec, selectors: PrometheusSelectors, query_range: QueryRange, result: SloResult
    ) -> None:
        """Fill in `result` for an availability or burn-rate SLO; raise InconclusiveResult without data."""
        assert selectors.errors is not None and selectors.total is not None
        chunks = len(split_range(query_range))
        result.query = (
            f"errors: {selectors.errors}; total: {selectors.total} (range queries from {utc_text(query_range.start_s)} "
            f"to {utc_text(query_range.end_s)}, step {query_range.step_s}s, {chunks} chunk(s) per selector)"
        )
        total = self.count(selectors.total, query_range)
        errors = self.count(selectors.errors, query_range)
        self.check_counts(selectors, errors, total)

        ratio = error_ratio(errors.total, total.total)
        result.samples = round(total.total)
        result.reason = (
            f"Prometheus counted {errors.total:.0f} errors in {total.total:.0f} requests "
            f"(increases of {errors.series_count} and {total.series_count} series, restarts counted from zero)"
        )
        if spec.kind == "availability":
            result.measured = 1.0 - ratio
            passed = result.measured >= (spec.min_success_ratio or 1.0)
        else:
            assert spec.target is not None and spec.max_burn_rate is not None
            result.measured = burn_rate(ratio, spec.target)
            passed = result.measured <= spec.max_burn_rate
            result.budget_used_share = budget_used_share(
                result.measured, window_s=query_range.span_s, period_s=spec.period_s
            )
            result.reason += (
                f"; the window used {result.budget_used_share:.4%} of the {spec.period or DEFAULT_PERIOD} error budget"
            )
        result.verdict = Verdict.PASS if passed else Verdict.FAIL

    @staticmethod
    def check_counts(selectors: PrometheusSelectors, errors: CounterWindow, total: CounterWindow) -> None:
        """Raise InconclusiveResult when the counts cannot give an honest ratio."""
        if total.series_count == 0:
            raise InconclusiveResult(
                f"the total selector {selectors.total} matched no series in the window; "
                "check its metric name and labels"
            )
        if errors.series_count == 0 and not selectors.absent_errors_are_zero:
            raise InconclusiveResult(
                f"the errors selector {selectors.errors} matched no series in the window; check its metric name "
                "and labels, or set prometheus.absent_errors_are_zero if the service creates error series "
                "at the first error"
            )
        for name, window in (("errors", errors), ("total", total)):
            if math.isnan(window.total):
                raise InconclusiveResult(
                    f"the {name} selector returned {window.invalid_points} NaN or negative samples, "
                    "which no counter has; check that it selects counters"
                )
        if total.total <= 0:
            raise InconclusiveResult("Prometheus counted no request in the window")
        if errors.total > total.total:
            raise InconclusiveResult(
                f"the errors selector counted {errors.total:.0f}, more than the {total.total:.0f} of the total "
                "selector; the errors must be a subset of the total"
            )

    # ----- latency -----

    def judge_latency(
        self, spec: SloSpec, selectors: PrometheusSelectors, query_range: QueryRange, result: SloResult
    ) -> None:
        """Fill in `result` for a latency SLO; raise InconclusiveResult without data."""
        assert selectors.buckets is not None
        assert spec.quantile is not None
        assert spec.max_latency_ms is not None
        # One evaluation at the window's end whose increase() range is the whole window: the
        # quantile of every observation in it, with restarts handled per bucket series.
        buckets_query = bucket_increase_query(selectors.buckets, query_range.span_s)
        value_query = quantile_query(spec.quantile, selectors.buckets, query_range.span_s)
        at_end = QueryRange(query_range.end_s, query_range.end_s, query_range.step_s)
        result.query = f"{value_query} (range query at {utc_text(at_end.end_s)})"

        buckets = {
            parse_bound(series.labels["le"]): series.values[-1]
            for series in self.promql.query_range(buckets_query, at_end)
            if "le" in series.labels and series.values
        }
        if not buckets:
            raise InconclusiveResult(
                f"the buckets selector {selectors.buckets} matched no bucket series with an le label in the window"
            )
        observations = observation_count(buckets)
        if math.isnan(observations):
            raise InconclusiveResult(f"the histogram {selectors.buckets} has no +Inf bucket, so no total count")
        if observations <= 0:
            raise InconclusiveResult(f"the histogram {selectors.buckets} recorded no observation in the window")
        result.samples = round(observations)

        quantile_series = self.promql.query_range(value_query, at_end)
        value = quantile_series[0].values[-1] if quantile_series and quantile_series[0].values else math.nan
        if math.isnan(value):
            raise InconclusiveResult("histogram_quantile returned NaN or no value for the window")
        to_ms = selectors.bucket_unit_s * 1000.0
        limit_ms = spec.max_latency_ms
        # NOTE: histogram_quantile interpolates linearly inside a bucket, so the measurement is
        # only as fine as the bucket bounds around the limit.
        if quantile_beyond_finite_buckets(spec.quantile, buckets):
            highest_ms = highest_finite_bound(buckets) * to_ms
            if highest_ms <= limit_ms:
                raise InconclusiveResult(
                    f"the p{spec.quantile * 100:g} latency lies above the highest finite bucket bound "
                    f"{highest_ms:g} ms, so the histogram cannot show whether it is within {limit_ms:g} ms; "
                    "add a bucket bound above the limit"
                )
            result.measured = highest_ms
            result.reason = (
                f"the p{spec.quantile * 100:g} latency lies above the highest finite bucket bound, "
                f"so it is at least {highest_ms:g} ms"
            )
            result.verdict = Verdict.FAIL
            return
        result.measured = value * to_ms
        result.verdict = Verdict.PASS if result.measured <= limit_ms else Verdict.FAIL
