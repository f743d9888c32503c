"""Ground truth: replicas that fail exactly 5 % of requests are measured as 5 % by the client
statistics and by Prometheus, also when a replica is killed and restarts inside the window."""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loadtests.runner import LocustRunner
from loadtests.stream import WindowStats
from sandbox.environment import Sandbox, SandboxConfig
from slo.client import evaluate_client
from slo.model import Phase, SloResult, SloSpec, Verdict
from slo.prometheus import PrometheusSource
from slo.ranges import QueryRange
from tests.conftest import free_port, requires_sandbox

pytestmark = requires_sandbox
logger = logging.getLogger(__name__)

ERROR_RATE = 0.05
TOLERANCE = 0.005
"""Half a percentage point. The replicas fail every 20th request, so a window's share is exact
up to one request per replica at each edge of the window."""
USERS = 60
"""Simulated users; each sends one request per second."""
WINDOW_S = 20
KILL_AT_S = 8
KILLED_REPLICA = "replica-1"
RESTART_TIMEOUT_S = 10.0
RECORD_TIMEOUT_S = 5.0
LATENCY_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
"""Bucket bounds of the demo service's latency histogram, in ms."""

SELECTORS = {
    "haproxy": {
        "errors": 'haproxy_frontend_http_responses_total{proxy="lb",code="5xx"}',
        "total": 'haproxy_frontend_http_responses_total{proxy="lb"}',
    },
    "replicas": {
        "errors": 'sandbox_requests_total{endpoint="/work",status="500"}',
        "total": 'sandbox_requests_total{endpoint="/work"}',
    },
}


@dataclass
class LoadWindow:
    """Client statistics of a window of steady load and its bounds in UTC epoch seconds."""

    stats: WindowStats
    start: float
    end: float


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    config = SandboxConfig(
        name=f"slo-{secrets.token_hex(3)}",
        replicas=3,
        error_rate=ERROR_RATE,
        lb_port=free_port(),
        prometheus_port=free_port(),
    )
    started = Sandbox(config)
    try:
        started.up()
        yield started
    finally:
        started.down()


@pytest.fixture(scope="module")
def prometheus(sandbox: Sandbox) -> PrometheusSource:
    return PrometheusSource(
        sandbox.prometheus_url,
        scrape_interval_s=sandbox.config.scrape_interval_s,
        coverage_selector='up{job="haproxy"}',
    )


def kill_replica(sandbox: Sandbox, name: str) -> None:
    """SIGKILL a replica and wait until supervisord has started it again."""
    old_pid = sandbox.replica_pids()[name]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while time.monotonic() < deadline:
        if sandbox.replica_pids().get(name, 0) not in (0, old_pid):
            return
        time.sleep(0.1)
    raise AssertionError(f"supervisord did not restart {name} within {RESTART_TIMEOUT_S:.0f} s")


def run_load(sandbox: Sandbox, workdir: Path, *, kill_at_s: float | None = None) -> LoadWindow:
    """Run Locust, observe WINDOW_S seconds of full load, optionally killing a replica inside them."""
    with LocustRunner(
        host=sandbox.lb_url, users=USERS, spawn_rate=USERS, run_time_s=WINDOW_S + 30, workdir=workdir
    ) as load:
        load.wait_for_first_record()
        # Every user has started one second after the first record; the window starts on the
        # next whole second so it contains whole seconds of client statistics.
        start = float(math.ceil(time.time()) + 1)
        end = start + WINDOW_S
        if kill_at_s is not None:
            time.sleep(max(0.0, start + kill_at_s - time.time()))
            kill_replica(sandbox, KILLED_REPLICA)
        time.sleep(max(0.0, end - time.time()))
        deadline = time.monotonic() + RECORD_TIMEOUT_S
        while time.monotonic() < deadline:
            load.check_alive()
            load.stream.poll()
            latest = load.stream.latest_second()
            if latest is not None and latest + 1 >= end:
                break
            time.sleep(0.2)
        return LoadWindow(load.stream.window(start, end), start, end)


@pytest.fixture(scope="module")
def steady_load(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> LoadWindow:
    return run_load(sandbox, tmp_path_factory.mktemp("steady"))


@pytest.fixture(scope="module")
def load_with_restart(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> LoadWindow:
    return run_load(sandbox, tmp_path_factory.mktemp("restart"), kill_at_s=KILL_AT_S)


def ratio_spec(kind: str, source_name: str, **objective: float) -> SloSpec:
    return SloSpec.model_validate(
        {
            "name": f"{kind}-{source_name}",
            "kind": kind,
            "source": "client" if source_name == "client" else "prometheus",
            "phases": ["baseline"],
            "prometheus": SELECTORS.get(source_name),
            **objective,
        }
    )


def measured_error_ratio(result: SloResult) -> float:
    logger.info("%s", result.message())
    assert result.measured is not None, result.message()
    return 1.0 - result.measured


def test_client_measures_five_percent(steady_load: LoadWindow) -> None:
    spec = ratio_spec("availability", "client", min_success_ratio=0.9)

    result = evaluate_client(spec, Phase.BASELINE, steady_load.stats, start=steady_load.start, end=steady_load.end)

    assert result.verdict == Verdict.PASS, result.message()
    assert result.samples >= USERS * WINDOW_S * 0.8
    assert abs(measured_error_ratio(result) - ERROR_RATE) <= TOLERANCE, result.message()


@pytest.mark.parametrize("source_name", ["haproxy", "replicas"])
def test_prometheus_measures_five_percent(
    prometheus: PrometheusSource, steady_load: LoadWindow, source_name: str
) -> None:
    spec = ratio_spec("availability", source_name, min_success_ratio=0.9)

    result = prometheus.evaluate(spec, Phase.BASELINE, start=steady_load.start, end=steady_load.end)

    assert result.verdict == Verdict.PASS, result.message()
    assert abs(measured_error_ratio(result) - ERROR_RATE) <= TOLERANCE, result.message()
    # Prometheus counts the same requests as the client, give or take a scrape at each edge.
    assert result.samples == pytest.approx(steady_load.stats.requests, rel=0.1)


@pytest.mark.parametrize("source_name", ["client", "haproxy", "replicas"])
def test_burn_rate_of_five_percent_errors(
    prometheus: PrometheusSource, steady_load: LoadWindow, source_name: str
) -> None:
    spec = ratio_spec("burn-rate", source_name, target=0.99, max_burn_rate=4.0)

    if source_name == "client":
        result = evaluate_client(spec, Phase.BASELINE, steady_load.stats, start=steady_load.start, end=steady_load.end)
    else:
        result = prometheus.evaluate(spec, Phase.BASELINE, start=steady_load.start, end=steady_load.end)
    message = result.message()
    logger.info("%s", message)

    assert result.verdict == Verdict.FAIL, message
    assert result.measured == pytest.approx(5.0, abs=TOLERANCE / 0.01), message
    assert f"measured {result.measured:.4f}" in message
    assert "burn rate <= 4 (target 0.99, period 30d)" in message
    assert "phase baseline" in message
    assert f"source {result.source.value}" in message
    if source_name != "client":
        assert f"query: errors: {SELECTORS[source_name]['errors']}" in message


def test_prometheus_latency_is_within_client_latency(prometheus: PrometheusSource, steady_load: LoadWindow) -> None:
    spec = SloSpec.model_validate(
        {
            "name": "latency-replicas",
            "kind": "latency",
            "source": "prometheus",
            "phases": ["baseline"],
            "quantile": 0.99,
            "max_latency_ms": 500,
            "prometheus": {"buckets": 'sandbox_request_duration_seconds_bucket{endpoint="/work"}'},
        }
    )
    client_p99_ms = steady_load.stats.latency_ms(0.99)
    # The service's own time is part of what the client waits, but histogram_quantile
    # interpolates inside a bucket, so its value may reach that bucket's upper bound.
    bound_ms = min((bound for bound in LATENCY_BUCKETS_MS if bound >= client_p99_ms), default=math.inf)

    result = prometheus.evaluate(spec, Phase.BASELINE, start=steady_load.start, end=steady_load.end)
    logger.info("%s; client p99 %.2f ms", result.message(), client_p99_ms)

    assert result.verdict == Verdict.PASS, result.message()
    assert result.measured is not None
    assert 0.0 < result.measured <= bound_ms, f"{result.message()}; client p99 {client_p99_ms:.2f} ms"
    assert result.query is not None and result.query.startswith("histogram_quantile(0.99, sum by (le) (increase(")
    assert result.samples == pytest.approx(steady_load.stats.requests, rel=0.1)


def test_restarted_replica_keeps_availability_exact(
    sandbox: Sandbox, prometheus: PrometheusSource, load_with_restart: LoadWindow
) -> None:
    window = load_with_restart
    planned = prometheus.plan(window.start, window.end)
    total = SELECTORS["replicas"]["total"]
    # Evidence that the window contains a counter reset that a naive sum would get wrong.
    resets = prometheus.promql.query_range(
        f'sum(resets(sandbox_requests_total{{endpoint="/work",replica="{KILLED_REPLICA}"}}[{planned.span_s}s]))',
        QueryRange(planned.end_s, planned.end_s, planned.step_s),
    )
    naive_sums = prometheus.promql.query_range(f"sum({total})", planned)
    naive_increase = naive_sums[0].values[-1] - naive_sums[0].values[0]

    replicas = prometheus.evaluate(
        ratio_spec("availability", "replicas", min_success_ratio=0.9), Phase.CHAOS, start=window.start, end=window.end
    )
    haproxy = prometheus.evaluate(
        ratio_spec("availability", "haproxy", min_success_ratio=0.9), Phase.CHAOS, start=window.start, end=window.end
    )

    logger.info(
        "client: %d requests; naive increase of the summed counters: %.0f", window.stats.requests, naive_increase
    )
    assert resets and resets[0].values[-1] >= 1, "the killed replica's counters show no reset"
    assert replicas.verdict == Verdict.PASS, replicas.message()
    assert abs(measured_error_ratio(replicas) - ERROR_RATE) <= TOLERANCE, replicas.message()
    # Neither lost nor inflated by the restart: the replicas served what the load balancer forwarded.
    assert replicas.samples == pytest.approx(haproxy.samples, rel=0.05), f"{replicas.message()} / {haproxy.message()}"
    assert replicas.samples == pytest.approx(window.stats.requests, rel=0.1), replicas.message()
    assert naive_increase < 0.9 * replicas.samples, f"naive sum increase {naive_increase:.0f} shows no reset"
