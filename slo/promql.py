"""PromQL range queries through prometheus-api-client, with typed results and stormgate errors.

Every failure becomes `TargetUnreachable` (no HTTP response, or a 5xx after the retries) or
`InconclusiveResult` (Prometheus responded but rejected the query or sent something other
than a matrix), each naming the URL and the query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from slo.ranges import QueryRange
from stormgate.errors import InconclusiveResult, TargetUnreachable

logger = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 10.0
QUERY_RETRIES = 2
"""Retries of a query whose connection failed or that got 502, 503 or 504."""
RETRY_BACKOFF_S = 0.5
"""urllib3 sleeps 0 s before the first retry, then this doubled for each further one."""
MAX_ERROR_TEXT = 300
"""Characters of a server's error body kept in a message; bodies can be whole HTML pages."""


@dataclass(frozen=True)
class Series:
    """One series of a range query result: its labels and its points in time order."""

    labels: dict[str, str]
    timestamps: list[float]
    """UTC seconds since the Unix epoch of each point."""
    values: list[float]
    """Sample values; Prometheus sends NaN and +Inf as strings, which become float NaN and inf."""


def describe(error: requests.RequestException) -> str:
    """Return the root cause of a failed request, without the long URL that urllib3 repeats."""
    cause: object = error.args[0] if error.args else error
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    return f"{type(error).__name__}: {str(cause)[:MAX_ERROR_TEXT]}"


class PrometheusClient:
    """Range queries against one Prometheus server."""

    def __init__(self, url: str, *, timeout_s: float = QUERY_TIMEOUT_S, retries: int = QUERY_RETRIES) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        retry = Retry(total=retries, backoff_factor=RETRY_BACKOFF_S, status_forcelist=(502, 503, 504))
        self.connection = PrometheusConnect(url=self.url, disable_ssl=True, retry=retry)

    def query_range(self, query: str, query_range: QueryRange) -> list[Series]:
        """Run `query` at every point of `query_range`; raise TargetUnreachable or InconclusiveResult."""
        try:
            raw: Any = self.connection.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(query_range.start_s, UTC),
                end_time=datetime.fromtimestamp(query_range.end_s, UTC),
                step=str(query_range.step_s),
                params={"timeout": f"{self.timeout_s:g}s"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as error:
            raise TargetUnreachable(
                f"Prometheus at {self.url} did not respond to the range query {query!r} ({describe(error)}); "
                "check that it runs and that the URL is right"
            ) from error
        except PrometheusApiClientException as error:
            raise InconclusiveResult(
                f"Prometheus at {self.url} rejected the range query {query!r}: {str(error)[:MAX_ERROR_TEXT]}; "
                "check the selector's syntax"
            ) from error
        return self._parse(query, raw)

    def _parse(self, query: str, raw: Any) -> list[Series]:
        try:
            return [
                Series(
                    labels={str(name): str(value) for name, value in item["metric"].items()},
                    timestamps=[float(stamp) for stamp, _ in item["values"]],
                    values=[float(value) for _, value in item["values"]],
                )
                for item in raw
            ]
        except (KeyError, TypeError, ValueError) as error:
            raise InconclusiveResult(
                f"Prometheus at {self.url} returned something other than a matrix for the range query {query!r} "
                f"({type(error).__name__}: {error}); check that the URL points at the Prometheus HTTP API"
            ) from error
