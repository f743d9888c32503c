"""Evaluation of SLOs from Prometheus with PromQL, through prometheus-api-client.

A Prometheus verdict is honest or it is inconclusive: an unreachable server, an empty
result, NaN, or a window with too few scrapes never passes.
"""

from __future__ import annotations

import logging
import math
import time

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException

from slo.model import Phase, SloResult, SloSpec, Source, Verdict

logger = logging.getLogger(__name__)

MIN_SCRAPES_PER_RATE_WINDOW = 2
"""`increase()` needs two samples in its window; shorter windows give empty or wrong results."""
MIN_COVERAGE = 0.5
"""Share of the expected scrapes of the window that must exist for a verdict."""
QUERY_TIMEOUT_S = 10.0


class PrometheusSource:
    """A Prometheus server and the scrape interval its targets use."""

    def __init__(self, url: str, *, scrape_interval_s: float, coverage_selector: str) -> None:
        self.url = url
        self.scrape_interval_s = scrape_interval_s
        self.coverage_selector = coverage_selector
        """Selector of a series scraped with the SLO's counters, such as `up{job="haproxy"}`."""
        self.client = PrometheusConnect(url=url, disable_ssl=True)

    def instant(self, query: str, at: float) -> list[float]:
        """Run an instant query at a UTC timestamp and return the sample values."""
        result = self.client.custom_query(query, params={"time": f"{at:.3f}", "timeout": f"{QUERY_TIMEOUT_S:.0f}s"})
        return [float(sample["value"][1]) for sample in result]

    def wait_for_scrape_after(self, at: float) -> None:
        """Sleep until Prometheus has scraped everything up to the UTC timestamp `at`."""
        delay_s = at + 2 * self.scrape_interval_s - time.time()
        if delay_s > 0:
            time.sleep(delay_s)

    def evaluate(self, spec: SloSpec, phase: Phase, *, start: float, end: float) -> SloResult:
        """Judge an availability SLO over [start, end) as the sum of errors over the sum of requests."""
        assert spec.prometheus is not None
        window_s = int(end - start)
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
        if window_s < MIN_SCRAPES_PER_RATE_WINDOW * self.scrape_interval_s:
            result.reason = (
                f"the window of {window_s} s is shorter than {MIN_SCRAPES_PER_RATE_WINDOW} scrape intervals "
                f"of {self.scrape_interval_s:g} s; lengthen the phase"
            )
            return result

        # increase() treats a drop of a counter as a reset, so a restarted instance adds its new
        # count instead of subtracting its old one.
        errors_query = f"sum(increase({spec.prometheus.errors}[{window_s}s]))"
        total_query = f"sum(increase({spec.prometheus.total}[{window_s}s]))"
        coverage_query = f"count_over_time({self.coverage_selector}[{window_s}s])"
        result.query = f"1 - {errors_query} / {total_query}"
        self.wait_for_scrape_after(end)
        try:
            scrapes = self.instant(coverage_query, end)
            errors = self.instant(errors_query, end)
            total = self.instant(total_query, end)
        except (requests.RequestException, PrometheusApiClientException) as error:
            result.reason = f"Prometheus at {self.url} failed to answer: {str(error)[:300]}"
            logger.warning("SLO %s in phase %s is inconclusive: %s", spec.name, phase.value, result.reason)
            return result

        expected_scrapes = window_s / self.scrape_interval_s
        result.samples = int(min(scrapes, default=0))
        if not scrapes or min(scrapes) < MIN_COVERAGE * expected_scrapes:
            result.reason = (
                f"Prometheus has {result.samples} scrapes of {self.coverage_selector} in the window, "
                f"fewer than {MIN_COVERAGE:.0%} of the {expected_scrapes:.0f} expected"
            )
            return result
        if not total or not errors or math.isnan(total[0]) or math.isnan(errors[0]):
            result.reason = "the query returned no data or NaN; check that the selectors match series"
            return result
        if total[0] <= 0:
            result.reason = "Prometheus counted no request in the window"
            return result

        measured = 1.0 - errors[0] / total[0]
        result.measured = measured
        result.verdict = Verdict.PASS if measured >= (spec.min_success_ratio or 1.0) else Verdict.FAIL
        return result
