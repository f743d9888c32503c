"""Prometheus exporter of the client statistics, served from the harness process.

The exporter reads the same per-second records as the harness (a `StatsStream`) and
serves cumulative figures on 127.0.0.1, so a Prometheus server can scrape the client's
view of the platform next to the platform's own metrics. Each scrape polls the stream
first, so the figures are at most one flush interval of the plugin old.

Metrics, each labelled with ``run_id``:
- ``stormgate_client_requests_total{endpoint}`` and
  ``stormgate_client_failures_total{endpoint,kind}``: counters;
- ``stormgate_client_latency_seconds{endpoint}``: a histogram;
- ``stormgate_client_users{source}`` and ``stormgate_client_cpu_percent{source}``: gauges
  from the newest record of each Locust process;
- ``stormgate_client_last_record_timestamp_seconds``: UTC epoch of the newest second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from loadtests.records import SecondRecord
from loadtests.stream import StatsStream
from stormgate.errors import PortInUse

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the latency histogram's buckets in seconds; +Inf is added."""


class _EndpointTotals:
    def __init__(self) -> None:
        self.requests = 0
        self.failures: dict[str, int] = {}
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum_s = 0.0


class ClientStatsCollector(Collector):
    """Cumulative client statistics, fed by a stream's new records."""

    def __init__(self, stream: StatsStream, *, run_id: str) -> None:
        self.stream = stream
        self.run_id = run_id
        self.endpoints: dict[str, _EndpointTotals] = {}
        self.latest: dict[str, SecondRecord] = {}
        self._lock = threading.Lock()
        stream.subscribe(self.add)

    def add(self, records: list[SecondRecord]) -> None:
        with self._lock:
            for record in records:
                key = record.source_key
                if key not in self.latest or record.ts >= self.latest[key].ts:
                    self.latest[key] = record
                for name, endpoint in record.endpoints.items():
                    totals = self.endpoints.setdefault(name, _EndpointTotals())
                    totals.requests += endpoint.requests
                    for kind, count in endpoint.failures.items():
                        totals.failures[kind] = totals.failures.get(kind, 0) + count
                    histogram = endpoint.decode_histogram()
                    if histogram is None:
                        continue
                    # NOTE: HDR steps report a bucket's top value, so a sample within 0.1% below a
                    # bucket bound of this histogram may be counted in the next bucket.
                    for step in histogram.get_recorded_iterator():
                        value_s = step.value_iterated_to / 1_000_000
                        count = step.count_added_in_this_iter_step
                        index = next(
                            (i for i, bound in enumerate(LATENCY_BUCKETS_S) if value_s <= bound), len(LATENCY_BUCKETS_S)
                        )
                        totals.bucket_counts[index] += count
                        totals.latency_sum_s += value_s * count

    def collect(self) -> Iterator[Metric]:
        self.stream.poll()
        with self._lock:
            requests = CounterMetricFamily(
                "stormgate_client_requests", "Requests the load generator completed.", labels=["run_id", "endpoint"]
            )
            failures = CounterMetricFamily(
                "stormgate_client_failures", "Failed requests by kind.", labels=["run_id", "endpoint", "kind"]
            )
            latency = HistogramMetricFamily(
                "stormgate_client_latency_seconds", "Client-side request latency.", labels=["run_id", "endpoint"]
            )
            for name, totals in sorted(self.endpoints.items()):
                requests.add_metric([self.run_id, name], totals.requests)
                for kind, count in sorted(totals.failures.items()):
                    failures.add_metric([self.run_id, name, kind], count)
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), totals.bucket_counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                latency.add_metric([self.run_id, name], buckets, totals.latency_sum_s)
            users = GaugeMetricFamily("stormgate_client_users", "Running users.", labels=["run_id", "source"])
            cpu = GaugeMetricFamily(
                "stormgate_client_cpu_percent", "CPU use of a Locust process.", labels=["run_id", "source"]
            )
            for source, record in sorted(self.latest.items()):
                users.add_metric([self.run_id, source], record.users)
                if record.cpu_percent is not None:
                    cpu.add_metric([self.run_id, source], record.cpu_percent)
            newest = GaugeMetricFamily(
                "stormgate_client_last_record_timestamp_seconds",
                "UTC epoch second of the newest record.",
                labels=["run_id"],
            )
            if self.latest:
                newest.add_metric([self.run_id], max(record.ts for record in self.latest.values()))
        yield from (requests, failures, latency, users, cpu, newest)


class StatsExporter:
    """HTTP server for `ClientStatsCollector` on 127.0.0.1:`port` (0 picks a free port)."""

    def __init__(self, stream: StatsStream, *, port: int, run_id: str = "", host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        self.collector = ClientStatsCollector(stream, run_id=run_id)
        self.registry.register(self.collector)
        self.host = host
        self.port = port
        self.run_id = run_id
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as error:
            raise PortInUse(
                f"The client metrics exporter cannot listen on {self.host}:{self.port} ({error.strerror}); "
                "choose a free port"
            ) from error
        self.port = int(self._server.server_address[1])
        logger.info("Run %s: client metrics served on %s.", self.run_id, self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        logger.info("Run %s: client metrics exporter stopped.", self.run_id)
