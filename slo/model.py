"""SLO specifications and results: what is judged, over which phase, from which source."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    """The harness could not judge: no data, NaN, an unreachable source or a broken generator."""


class Phase(StrEnum):
    WARMUP = "warmup"
    BASELINE = "baseline"
    CHAOS = "chaos"
    RECOVERY = "recovery"
    STEADY = "steady"


class Source(StrEnum):
    CLIENT = "client"
    """Per-second statistics of the load generator: every request counted exactly."""
    PROMETHEUS = "prometheus"
    """PromQL over the phase window, as the platform's own monitoring sees it."""


def combine(verdicts: list[Verdict]) -> Verdict:
    """Return fail if anything failed, else inconclusive if anything could not be judged, else pass.

    An empty list is inconclusive: a run that judged nothing has not passed.
    """
    if not verdicts:
        return Verdict.INCONCLUSIVE
    if Verdict.FAIL in verdicts:
        return Verdict.FAIL
    if Verdict.INCONCLUSIVE in verdicts:
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


class PrometheusRatio(BaseModel):
    """Selectors of two counters whose increases give an error ratio."""

    model_config = ConfigDict(extra="forbid")

    errors: str = Field(min_length=1)
    """Counter selector of failed requests, such as `http_requests_total{code=~"5.."}`."""
    total: str = Field(min_length=1)
    """Counter selector of all requests."""


class SloSpec(BaseModel):
    """One service-level objective, judged separately in every phase it lists."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["availability", "latency"]
    source: Source = Source.CLIENT
    phases: list[Phase] = Field(min_length=1)
    min_success_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    """Availability objective: successful requests over all requests must be at least this."""
    quantile: float | None = Field(default=None, gt=0.0, le=1.0)
    """Latency objective: this quantile of the latency must be at most `max_latency_ms`."""
    max_latency_ms: float | None = Field(default=None, gt=0.0)
    prometheus: PrometheusRatio | None = None
    """Counters for a Prometheus availability SLO."""

    @model_validator(mode="after")
    def _check_kind_fields(self) -> SloSpec:
        if self.kind == "availability" and self.min_success_ratio is None:
            raise ValueError(f"SLO {self.name!r} is an availability SLO and needs min_success_ratio, e.g. 0.99")
        if self.kind == "latency" and (self.quantile is None or self.max_latency_ms is None):
            raise ValueError(f"SLO {self.name!r} is a latency SLO and needs quantile (e.g. 0.99) and max_latency_ms")
        if self.kind == "latency" and self.source == Source.PROMETHEUS:
            # TODO: latency quantiles from Prometheus histograms (histogram_quantile) are not built yet.
            raise ValueError(f"SLO {self.name!r}: latency SLOs support only source 'client' so far")
        if self.source == Source.PROMETHEUS and self.prometheus is None:
            raise ValueError(f"SLO {self.name!r} reads Prometheus and needs 'prometheus: {{errors: ..., total: ...}}'")
        return self

    def objective_text(self) -> str:
        if self.kind == "availability":
            return f"success ratio >= {self.min_success_ratio}"
        return f"p{(self.quantile or 0) * 100:g} latency <= {self.max_latency_ms} ms"


class SloResult(BaseModel):
    """The judgement of one SLO in one phase."""

    slo: str
    phase: Phase
    source: Source
    verdict: Verdict
    objective: str
    measured: float | None
    """Success ratio or latency in ms; None when nothing could be measured."""
    samples: int = 0
    """Requests behind the measurement (client) or Prometheus samples used."""
    window_start: float
    window_end: float
    """Phase window in seconds since the Unix epoch (UTC)."""
    reason: str = ""
    query: str | None = None

    def message(self) -> str:
        measured = "no value" if self.measured is None or math.isnan(self.measured) else f"{self.measured:.4f}"
        text = (
            f"SLO {self.slo!r} {self.verdict.value.upper()} in phase {self.phase.value} "
            f"(source {self.source.value}): measured {measured}, limit {self.objective}"
        )
        if self.reason:
            text += f"; {self.reason}"
        if self.query:
            text += f"; query: {self.query}"
        return text
