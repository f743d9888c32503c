"""Evaluation of SLOs from the load generator's own statistics."""

from __future__ import annotations

import math

from loadtests.stream import WindowStats
from slo.model import Phase, SloResult, SloSpec, Source, Verdict


def evaluate_client(spec: SloSpec, phase: Phase, stats: WindowStats, *, start: float, end: float) -> SloResult:
    """Judge one SLO over one phase window of client statistics; no request is inconclusive."""
    if spec.kind == "availability":
        measured = stats.success_ratio
        passed = not math.isnan(measured) and measured >= (spec.min_success_ratio or 1.0)
    else:
        measured = stats.latency_ms(spec.quantile or 1.0)
        passed = not math.isnan(measured) and measured <= (spec.max_latency_ms or 0.0)

    reason = ""
    if stats.requests == 0:
        verdict = Verdict.INCONCLUSIVE
        reason = "the load generator recorded no request in this window"
    elif passed:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.FAIL
        if stats.failure_kinds:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(stats.failure_kinds.items()))
            reason = f"{stats.failures} of {stats.requests} requests failed ({kinds})"
    return SloResult(
        slo=spec.name,
        phase=phase,
        source=Source.CLIENT,
        verdict=verdict,
        objective=spec.objective_text(),
        measured=None if math.isnan(measured) else measured,
        samples=stats.requests,
        window_start=start,
        window_end=end,
        reason=reason,
    )
