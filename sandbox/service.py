"""Demo HTTP service that the sandbox runs in several replicas.

Endpoints:
- ``/work``: does a little CPU work and responds with 200, or with 500 for the
  configured share of requests;
- ``/healthz``: responds with 200 once the service listens;
- ``/metrics``: Prometheus metrics (request counter by endpoint and status, latency
  histogram).

Two settings give tests a ground truth. The startup delay is counted from the start
of the process, so a replica listens exactly that long after it was (re)started. The
error rate is applied deterministically: with rate r, request n fails when
floor(n * r) advances, so a rate of 0.05 fails exactly one request in twenty.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

logger = logging.getLogger("sandbox.service")

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "sandbox_requests",
    "Requests answered by this replica, by endpoint and HTTP status.",
    ["endpoint", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "sandbox_request_duration_seconds",
    "Time spent answering a request, in seconds.",
    ["endpoint"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

WORK_ROUNDS = 200
"""SHA-256 rounds per /work request: about a tenth of a millisecond of CPU."""


class ErrorBudget:
    """Deterministic error injection: fails exactly `rate` of the requests."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._count = 0
        self._lock = threading.Lock()

    def next_fails(self) -> bool:
        with self._lock:
            before = int(self._count * self.rate)
            self._count += 1
            return int(self._count * self.rate) > before


def process_age_s() -> float:
    """Return the seconds since this process started, from /proc (Linux)."""
    with open("/proc/self/stat", encoding="ascii") as stat_file:
        fields = stat_file.read().rsplit(")", 1)[1].split()
    # Field 22 of /proc/PID/stat (index 19 after the command name) is the start time in clock
    # ticks after boot; /proc/uptime gives the seconds since boot.
    start_ticks = int(fields[19])
    with open("/proc/uptime", encoding="ascii") as uptime_file:
        uptime_s = float(uptime_file.read().split()[0])
    return uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")


def make_handler(name: str, errors: ErrorBudget) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            started = time.perf_counter()
            path = self.path.split("?", 1)[0]
            if path == "/work":
                status, body, content_type = self._work()
            elif path == "/healthz":
                status, body, content_type = 200, b"ok\n", "text/plain"
            elif path == "/metrics":
                status, body, content_type = 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            else:
                status, body, content_type = 404, b"not found\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Replica", name)
            self.end_headers()
            self.wfile.write(body)
            if path in ("/work", "/healthz"):
                REQUESTS.labels(endpoint=path, status=str(status)).inc()
                LATENCY.labels(endpoint=path).observe(time.perf_counter() - started)

        def _work(self) -> tuple[int, bytes, str]:
            digest = name.encode()
            for _ in range(WORK_ROUNDS):
                digest = hashlib.sha256(digest).digest()
            if errors.next_fails():
                return 500, b"injected error\n", "text/plain"
            return 200, digest.hex().encode() + b"\n", "text/plain"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            # Access logs would flood supervisord's log files at hundreds of requests a second.
            return

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stormgate sandbox demo service")
    parser.add_argument("--name", required=True, help="replica name, sent as X-Replica")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    parser.add_argument(
        "--startup-delay-s",
        type=float,
        default=0.0,
        help="seconds from process start until the service listens",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of /work requests that get HTTP 500, from 0 to 1"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    remaining_s = args.startup_delay_s - process_age_s()
    if remaining_s > 0:
        time.sleep(remaining_s)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.name, ErrorBudget(args.error_rate)))
    server.daemon_threads = True
    logger.info("Replica %s listening on %s:%d after %.3f s.", args.name, args.host, args.port, process_age_s())
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
