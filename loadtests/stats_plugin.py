"""Locust plugin that streams per-second client statistics to the stormgate harness.

Importing this module from a locustfile registers the listeners. When the environment
variable STORMGATE_STATS_DIR names a folder, every Locust process that sends requests
writes one JSON line per second to ``stats-<pid>.jsonl`` in it: requests, failures by
kind and an HDR latency histogram per endpoint, keyed by the wall-clock second (UTC
epoch) in which the requests completed. Seconds without requests are written too, so
a missing second means the generator stalled, not that it was idle. Without the variable
the plugin does nothing, so the locustfile still runs with plain ``locust -f``.

The harness reads these files while Locust runs (see loadtests.stream); one file per
process keeps `--processes N` free of any locking between processes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from hdrh.histogram import HdrHistogram
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner

logger = logging.getLogger(__name__)

STATS_DIR_VARIABLE = "STORMGATE_STATS_DIR"
FLUSH_INTERVAL_S = 0.25
"""How often completed seconds are written; a record is late by at most this much."""
HISTOGRAM_MIN_US = 1
HISTOGRAM_MAX_US = 3_600_000_000
HISTOGRAM_DIGITS = 3
"""Significant digits of the HDR histograms: values are exact to 0.1%."""


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HISTOGRAM_MIN_US, HISTOGRAM_MAX_US, HISTOGRAM_DIGITS)


def failure_kind(exception: BaseException, response: Any) -> str:
    """Name a failure the way an SLO report should show it: HTTP status or exception class."""
    status = getattr(response, "status_code", 0) or 0
    if status:
        return f"HTTP {status}"
    return type(exception).__name__


@dataclass
class EndpointSecond:
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram = field(default_factory=new_histogram)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "histogram": base64.b64encode(self.histogram.encode()).decode("ascii") if self.requests else "",
        }


class SecondWriter:
    """Per-second buckets of one Locust process and the file they are written to."""

    def __init__(self, path: Path, environment: Environment) -> None:
        self.path = path
        self.environment = environment
        self.buckets: dict[int, dict[str, EndpointSecond]] = {}
        self.next_second = int(time.time())
        self.file = path.open("a", encoding="utf-8")

    def record(self, name: str, response_time_ms: float, exception: BaseException | None, response: Any) -> None:
        second = int(time.time())
        endpoint = self.buckets.setdefault(second, {}).setdefault(name, EndpointSecond())
        endpoint.requests += 1
        # Locust reports milliseconds as a float; the histogram holds whole microseconds.
        endpoint.histogram.record_value(max(HISTOGRAM_MIN_US, min(HISTOGRAM_MAX_US, round(response_time_ms * 1000))))
        if exception is not None:
            kind = failure_kind(exception, response)
            endpoint.failures[kind] = endpoint.failures.get(kind, 0) + 1

    def flush(self, *, include_current: bool = False) -> None:
        """Write every completed second, empty ones included, in order."""
        last = int(time.time()) if include_current else int(time.time()) - 1
        runner = self.environment.runner
        users = runner.user_count if runner is not None else 0
        while self.next_second <= last:
            second = self.next_second
            endpoints = self.buckets.pop(second, {})
            line = {
                "ts": second,
                "pid": os.getpid(),
                "users": users,
                "endpoints": {name: bucket.to_json() for name, bucket in endpoints.items()},
            }
            self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.next_second += 1
        self.file.flush()

    def run_forever(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def close(self) -> None:
        self.flush(include_current=True)
        self.file.close()


_writer: SecondWriter | None = None


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    global _writer
    stats_dir = os.environ.get(STATS_DIR_VARIABLE)
    if not stats_dir or isinstance(environment.runner, MasterRunner):
        # A master sends no requests, so only local runners and workers write records.
        return
    path = Path(stats_dir) / f"stats-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _writer = SecondWriter(path, environment)
    gevent.spawn(_writer.run_forever)
    logger.info("Streaming per-second statistics to %s.", path)


def _on_request(
    name: str, response_time: float, exception: BaseException | None = None, response: Any = None, **_kwargs: Any
) -> None:
    if _writer is not None:
        _writer.record(name, response_time, exception, response)


def _on_quitting(**_kwargs: Any) -> None:
    if _writer is not None:
        _writer.close()


events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.request.add_listener(_on_request)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
