"""SLO specifications and results: what is judged, over which phase, from which source."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from slo.burn import parse_duration_s


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


SloKind = Literal["availability", "latency", "burn-rate"]

DEFAULT_PERIOD = "30d"
LABEL_MATCHERS = r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}'
"""Braces with label matchers; a brace inside a quoted label value does not end them."""
SELECTOR_PATTERN = re.compile(rf"^(?:[A-Za-z_:][A-Za-z0-9_:]*\s*(?:{LABEL_MATCHERS})?|{LABEL_MATCHERS})$")
"""A metric name with optional label matchers, or label matchers alone: no function, no range."""
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "availability": ("min_success_ratio",),
    "latency": ("quantile", "max_latency_ms"),
    "burn-rate": ("target", "period", "max_burn_rate"),
}
"""Objective fields of each SLO kind; a field of another kind would be silently ignored, so it is rejected."""


def check_selector(field_name: str, value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    if not SELECTOR_PATTERN.fullmatch(stripped):
        raise ValueError(
            f"{field_name} must be a series selector such as 'http_requests_total{{code=~\"5..\"}}', got {value!r}; "
            "give the counter itself without functions, ranges or aggregations, because resets are found per series"
        )
    return stripped


class PrometheusSelectors(BaseModel):
    """Series selectors of a Prometheus SLO: counters for ratios, histogram buckets for latency."""

    model_config = ConfigDict(extra="forbid")

    errors: str | None = None
    """Counter selector of failed requests, such as `http_requests_total{code=~"5.."}`."""
    total: str | None = None
    """Counter selector of all requests, failed ones included."""
    buckets: str | None = None
    """Selector of histogram bucket counters with an `le` label, such as `http_request_duration_seconds_bucket`."""
    bucket_unit_s: float = Field(default=1.0, gt=0.0)
    """Seconds per unit of the `le` bounds: 1 for histograms in seconds, the Prometheus convention."""
    absent_errors_are_zero: bool = False
    """Count an `errors` selector that matches no series as zero errors. Only for services that
    create their error series at the first error; otherwise a misspelled selector would pass."""

    @field_validator("errors", "total", "buckets")
    @classmethod
    def _check_selector(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_selector(f"prometheus.{info.field_name}", value)

    @field_validator("buckets")
    @classmethod
    def _check_bucket_series(cls, value: str | None) -> str | None:
        if value is not None and "_bucket" not in value:
            raise ValueError(
                f"prometheus.buckets must select the _bucket series of a histogram, got {value!r}; "
                f"write for example '{value.split('{')[0] or 'name'}_bucket'"
            )
        return value


def check_ratio(field_name: str, value: float, *, example: str) -> float:
    """Reject values outside (0, 1] with a hint for percentages."""
    if math.isnan(value) or not 0.0 < value <= 1.0:
        hint = f"for {value:g} % write {value / 100:g}" if 1.0 < value <= 100.0 else f"such as {example}"
        raise ValueError(f"{field_name} must be a ratio in (0, 1], got {value!r}; {hint}")
    return value


def check_positive(field_name: str, value: float, *, example: str) -> float:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{field_name} must be a positive finite number, got {value!r}; give for example {example}")
    return value


class SloSpec(BaseModel):
    """One service-level objective, judged separately in every phase it lists."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: SloKind
    source: Source = Source.CLIENT
    phases: list[Phase] = Field(min_length=1)
    min_success_ratio: float | None = None
    """Availability objective: successful requests over all requests must be at least this."""
    quantile: float | None = None
    """Latency objective: this quantile of the latency must be at most `max_latency_ms`."""
    max_latency_ms: float | None = None
    target: float | None = None
    """Burn-rate SLO: the SLO target as a success ratio, such as 0.999; 1 - target is the error budget."""
    period: str | None = None
    """Burn-rate SLO: the SLO period as a Prometheus duration, such as `30d` (the default) or `7d`."""
    max_burn_rate: float | None = None
    """Burn-rate objective: the window's error ratio over (1 - target) must be at most this."""
    prometheus: PrometheusSelectors | None = None
    """Series that a Prometheus SLO reads."""

    @field_validator("min_success_ratio")
    @classmethod
    def _check_min_success_ratio(cls, value: float | None) -> float | None:
        return None if value is None else check_ratio("min_success_ratio", value, example="0.99")

    @field_validator("quantile")
    @classmethod
    def _check_quantile(cls, value: float | None) -> float | None:
        if value is not None and 1.0 < value <= 100.0:
            raise ValueError(f"quantile must be in (0, 1], got {value!r}; for p{value:g} write {value / 100:g}")
        return None if value is None else check_ratio("quantile", value, example="0.99")

    @field_validator("max_latency_ms")
    @classmethod
    def _check_max_latency(cls, value: float | None) -> float | None:
        return None if value is None else check_positive("max_latency_ms", value, example="500")

    @field_validator("max_burn_rate")
    @classmethod
    def _check_max_burn_rate(cls, value: float | None) -> float | None:
        return None if value is None else check_positive("max_burn_rate", value, example="14.4")

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if value == 1.0:
            raise ValueError("target is 1, which leaves no error budget to burn; use a target below 1, such as 0.999")
        if math.isnan(value) or not 0.0 < value < 1.0:
            hint = f"for {value:g} % write {value / 100:g}" if 1.0 < value < 100.0 else "such as 0.999"
            raise ValueError(f"target must be a success ratio between 0 and 1, got {value!r}; {hint}")
        return value

    @field_validator("period")
    @classmethod
    def _check_period(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_duration_s(value)
        except ValueError as error:
            raise ValueError(f"period: {error}") from error
        return value

    @field_validator("phases")
    @classmethod
    def _check_phases(cls, value: list[Phase]) -> list[Phase]:
        if Phase.WARMUP in value:
            raise ValueError("phase warmup is never judged, so an SLO there would be silently skipped; remove it")
        duplicates = sorted({phase.value for phase in value if value.count(phase) > 1})
        if duplicates:
            raise ValueError(f"phases lists {', '.join(duplicates)} more than once; list each phase once")
        return value

    @model_validator(mode="after")
    def _check_kind_fields(self) -> SloSpec:
        for kind, fields in KIND_FIELDS.items():
            if kind == self.kind:
                continue
            for field_name in fields:
                if getattr(self, field_name) is not None:
                    raise ValueError(
                        f"SLO {self.name!r} has kind {self.kind}, but {field_name} "
                        f"(= {getattr(self, field_name)!r}) belongs to {kind} SLOs; remove it or set kind: {kind}"
                    )
        if self.kind == "availability" and self.min_success_ratio is None:
            raise ValueError(f"SLO {self.name!r} is an availability SLO and needs min_success_ratio, e.g. 0.99")
        if self.kind == "latency" and (self.quantile is None or self.max_latency_ms is None):
            raise ValueError(f"SLO {self.name!r} is a latency SLO and needs quantile (e.g. 0.99) and max_latency_ms")
        if self.kind == "burn-rate" and (self.target is None or self.max_burn_rate is None):
            raise ValueError(
                f"SLO {self.name!r} is a burn-rate SLO and needs target (e.g. 0.999) and max_burn_rate (e.g. 14.4); "
                f"period defaults to {DEFAULT_PERIOD}"
            )
        self._check_source()
        return self

    def _check_source(self) -> None:
        selectors = self.prometheus
        if self.source == Source.CLIENT:
            if selectors is not None:
                raise ValueError(
                    f"SLO {self.name!r} reads the client statistics, so its prometheus block would be ignored; "
                    "set source: prometheus or remove the block"
                )
            return
        if self.kind == "latency":
            if selectors is None or selectors.buckets is None:
                raise ValueError(
                    f"SLO {self.name!r} reads latency from Prometheus and needs "
                    "'prometheus: {buckets: <histogram>_bucket{...}}'"
                )
            return
        if selectors is None or selectors.errors is None or selectors.total is None:
            raise ValueError(f"SLO {self.name!r} reads Prometheus and needs 'prometheus: {{errors: ..., total: ...}}'")

    @property
    def period_s(self) -> float:
        """SLO period in seconds; 30 days unless `period` sets another."""
        return parse_duration_s(self.period or DEFAULT_PERIOD)

    def objective_text(self) -> str:
        if self.kind == "availability":
            return f"success ratio >= {self.min_success_ratio}"
        if self.kind == "burn-rate":
            return f"burn rate <= {self.max_burn_rate:g} (target {self.target}, period {self.period or DEFAULT_PERIOD})"
        return f"p{(self.quantile or 0) * 100:g} latency <= {self.max_latency_ms:g} ms"


class SloResult(BaseModel):
    """The judgement of one SLO in one phase."""

    slo: str
    phase: Phase
    source: Source
    verdict: Verdict
    objective: str
    measured: float | None
    """Success ratio, latency in ms or burn rate; None when nothing could be measured."""
    samples: int = 0
    """Requests behind the measurement: counted by the client, or counted by Prometheus (the
    increase of the total selector, or the observations of the latency histogram)."""
    window_start: float
    window_end: float
    """Phase window in seconds since the Unix epoch (UTC)."""
    reason: str = ""
    query: str | None = None
    """PromQL that produced the measurement, with the range and step it ran over."""
    budget_used_share: float | None = None
    """Burn-rate SLOs: share of the SLO period's error budget that the window used."""

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
