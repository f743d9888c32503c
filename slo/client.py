"""Evaluation of SLOs from the load generator's own statistics, where every request is counted."""

from __future__ import annotations

import math

from loadtests.stream import WindowStats
from slo.burn import budget_used_share, burn_rate
from slo.counters import error_ratio
from slo.model import DEFAULT_PERIOD, Phase, SloResult, SloSpec, Source, Verdict


def evaluate_client(spec: SloSpec, phase: Phase, stats: WindowStats, *, start: float, end: float) -> SloResult:
    """Judge one SLO over one phase window of client statistics; no request is inconclusive."""
    result = SloResult(
        slo=spec.name,
        phase=phase,
        source=Source.CLIENT,
        verdict=Verdict.INCONCLUSIVE,
        objective=spec.objective_text(),
        measured=None,
        samples=stats.requests,
        window_start=start,
        window_end=end,
    )
    if stats.requests == 0:
        result.reason = "the load generator recorded no request in this window"
        return result

    if spec.kind == "availability":
        measured = stats.success_ratio
        passed = measured >= (spec.min_success_ratio or 1.0)
    elif spec.kind == "burn-rate":
        assert spec.target is not None and spec.max_burn_rate is not None
        measured = burn_rate(error_ratio(stats.failures, stats.requests), spec.target)
        passed = measured <= spec.max_burn_rate
        result.budget_used_share = budget_used_share(measured, window_s=end - start, period_s=spec.period_s)
        result.reason = (
            f"{stats.failures} of {stats.requests} requests failed; the window used "
            f"{result.budget_used_share:.4%} of the {spec.period or DEFAULT_PERIOD} error budget"
        )
    else:
        measured = stats.latency_ms(spec.quantile or 1.0)
        passed = measured <= (spec.max_latency_ms or 0.0)

    if math.isnan(measured):
        result.reason = "the client statistics gave NaN for this window"
        return result
    result.measured = measured
    result.verdict = Verdict.PASS if passed else Verdict.FAIL
    if result.verdict == Verdict.FAIL and stats.failure_kinds and spec.kind != "burn-rate":
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(stats.failure_kinds.items()))
        result.reason = f"{stats.failures} of {stats.requests} requests failed ({kinds})"
    return result
