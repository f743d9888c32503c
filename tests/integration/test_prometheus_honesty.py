"""A Prometheus verdict is honest or inconclusive: an outage, an unreachable URL, a selector
without series, NaN or a scrape gap never pass. Two real Prometheus servers are used: the
sandbox's, and one serving days of synthetic series written with `promtool`."""

from __future__ import annotations

import logging
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.environment import Sandbox, SandboxConfig
from slo.model import Phase, SloResult, SloSpec, Verdict
from slo.prometheus import MAX_SCRAPE_GAP_INTERVALS, PrometheusSource
from slo.ranges import split_range
from stormgate.errors import InconclusiveResult, SandboxError
from tests.conftest import free_port, requires_sandbox

logger = logging.getLogger(__name__)

TRAFFIC_S = 6.0
TRAFFIC_RATE_PER_S = 20.0
OUTAGE_S = 6.0
READY_TIMEOUT_S = 30.0
LB_SELECTORS = {
    "errors": 'haproxy_frontend_http_responses_total{proxy="lb",code="5xx"}',
    "total": 'haproxy_frontend_http_responses_total{proxy="lb"}',
}


def availability(name: str, selectors: Mapping[str, object]) -> SloSpec:
    return SloSpec.model_validate(
        {
            "name": name,
            "kind": "availability",
            "source": "prometheus",
            "phases": ["baseline"],
            "min_success_ratio": 0.9,
            "prometheus": selectors,
        }
    )


def judged(result: SloResult) -> SloResult:
    logger.info("%s", result.message())
    return result


def send_requests(url: str, *, duration_s: float, rate_per_s: float) -> int:
    """Send GET requests at about `rate_per_s` for `duration_s`; return how many got a response."""
    answered = 0
    deadline = time.monotonic() + duration_s
    for _ in range(int(duration_s * rate_per_s)):
        if time.monotonic() >= deadline:
            break
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                response.read()
            answered += 1
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0 / rate_per_s)
    return answered


# ----- the sandbox's Prometheus -----


@dataclass
class Window:
    start: float
    end: float


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    config = SandboxConfig(
        name=f"slo-{secrets.token_hex(3)}", replicas=2, lb_port=free_port(), prometheus_port=free_port()
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


@pytest.fixture(scope="module")
def traffic(sandbox: Sandbox) -> Window:
    # A window may start only where Prometheus has scraped for a while: a fresh sandbox's
    # first scrapes are seconds old, and a window before them is rightly inconclusive.
    time.sleep(MAX_SCRAPE_GAP_INTERVALS * sandbox.config.scrape_interval_s)
    start = time.time()
    answered = send_requests(f"{sandbox.lb_url}/work", duration_s=TRAFFIC_S, rate_per_s=TRAFFIC_RATE_PER_S)
    assert answered > 0, f"the load balancer at {sandbox.lb_url} answered no request"
    return Window(start, time.time())


def test_unreachable_url_is_inconclusive_and_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    source = PrometheusSource(url, scrape_interval_s=1, coverage_selector='up{job="haproxy"}')
    now = time.time()

    result = judged(source.evaluate(availability("lb", LB_SELECTORS), Phase.BASELINE, start=now - 30, end=now - 10))

    assert result.verdict == Verdict.INCONCLUSIVE
    assert result.measured is None
    assert url in result.reason
    assert "did not respond" in result.reason


@requires_sandbox
def test_full_scrapes_pass(prometheus: PrometheusSource, traffic: Window) -> None:
    result = judged(prometheus.evaluate(availability("lb", LB_SELECTORS), Phase.BASELINE, **vars(traffic)))

    assert result.verdict == Verdict.PASS, result.message()
    assert result.measured == 1.0
    assert result.samples > 0


@requires_sandbox
@pytest.mark.parametrize(
    ("selectors", "missing"),
    [
        ({"errors": LB_SELECTORS["errors"], "total": 'sandbox_requests_total{endpoint="/absent"}'}, "total"),
        # The replicas create their status="500" series at the first error, and none failed.
        ({"errors": 'sandbox_requests_total{status="500"}', "total": LB_SELECTORS["total"]}, "errors"),
    ],
    ids=["total", "errors"],
)
def test_selector_without_series_is_inconclusive(
    prometheus: PrometheusSource, traffic: Window, selectors: dict[str, str], missing: str
) -> None:
    result = judged(prometheus.evaluate(availability("lb", selectors), Phase.BASELINE, **vars(traffic)))

    assert result.verdict == Verdict.INCONCLUSIVE
    assert f"the {missing} selector {selectors[missing]} matched no series" in result.reason


@requires_sandbox
def test_absent_errors_may_count_as_zero(prometheus: PrometheusSource, traffic: Window) -> None:
    selectors = {"errors": 'sandbox_requests_total{status="500"}', "total": 'sandbox_requests_total{endpoint="/work"}'}

    result = judged(
        prometheus.evaluate(
            availability("replicas", {**selectors, "absent_errors_are_zero": True}), Phase.BASELINE, **vars(traffic)
        )
    )

    assert result.verdict == Verdict.PASS, result.message()
    assert result.measured == 1.0


def wait_until_scraping(sandbox: Sandbox, *, after: float) -> None:
    """Wait until Prometheus responds and has a scrape newer than `after` (UTC epoch seconds)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            samples = sandbox.query_prometheus('timestamp(up{job="haproxy"})')
        except SandboxError:
            samples = []  # Prometheus is still starting
        if samples and float(samples[0]["value"][1]) > after:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus of sandbox {sandbox.config.name} did not scrape within {READY_TIMEOUT_S:.0f} s")


@requires_sandbox
def test_prometheus_stopped_mid_window_is_inconclusive(sandbox: Sandbox, prometheus: PrometheusSource) -> None:
    supervisor = sandbox.supervisor().supervisor
    spec = availability("lb", LB_SELECTORS)
    start = time.time()
    sender = threading.Thread(
        target=send_requests,
        args=(f"{sandbox.lb_url}/work",),
        kwargs={"duration_s": 3 + OUTAGE_S, "rate_per_s": TRAFFIC_RATE_PER_S},
    )
    sender.start()
    try:
        time.sleep(3.0)
        supervisor.stopProcess("prometheus")
        time.sleep(OUTAGE_S)
        end = time.time()
        while_stopped = judged(prometheus.evaluate(spec, Phase.BASELINE, start=start, end=end))
    finally:
        if supervisor.getProcessInfo("prometheus")["statename"] != "RUNNING":
            supervisor.startProcess("prometheus")
        sender.join()
    wait_until_scraping(sandbox, after=end)
    after_restart = judged(prometheus.evaluate(spec, Phase.BASELINE, start=start, end=end))

    assert while_stopped.verdict == Verdict.INCONCLUSIVE
    assert sandbox.prometheus_url in while_stopped.reason
    assert after_restart.verdict == Verdict.INCONCLUSIVE
    assert 'gap of more than 3 s in the scrapes of up{job="haproxy"}' in after_restart.reason
    assert after_restart.measured is None


# ----- a Prometheus serving days of synthetic series -----

SCRAPE_INTERVAL_S = 15
DAYS = 3
GAP_S = 600
"""Length of the hole in the `gappy` coverage series."""


@dataclass
class SyntheticCounter:
    """Samples of one counter series and the requests it really counted inside the window."""

    labels: str
    samples: list[tuple[int, float]] = field(default_factory=list)
    true_increase: float = 0.0


@dataclass
class Synthetic:
    url: str
    start: int
    end: int
    errors: float
    total: float


def synthetic_counters(start: int, end: int) -> list[SyntheticCounter]:
    """Three instances that each fail 5 % of 20 requests per scrape: `a` runs throughout, `b`
    restarts every day, `c` starts halfway through."""
    counters = []
    middle = start + (end - start) // 2
    for instance in ("a", "b", "c"):
        for code, per_scrape in (("200", 19), ("500", 1)):
            counter = SyntheticCounter(f'instance="{instance}",code="{code}"')
            value = 1000.0
            for stamp in range(start, end + 1, SCRAPE_INTERVAL_S):
                if instance == "c" and stamp < middle:
                    continue
                if instance == "c" and stamp == middle:
                    value = 0.0  # a new series: everything it counted is inside the window
                if instance == "b" and stamp > start and (stamp - start) % 86_400 == 0:
                    value = 0.0  # restart: the counter starts from zero
                if stamp > start or instance == "c":
                    value += per_scrape
                    counter.true_increase += per_scrape
                counter.samples.append((stamp, value))
            counters.append(counter)
    return counters


def openmetrics(start: int, end: int, counters: list[SyntheticCounter]) -> str:
    lines = ["# TYPE synthetic_requests counter"]
    for counter in counters:
        lines += [f"synthetic_requests_total{{{counter.labels}}} {value:g} {stamp}" for stamp, value in counter.samples]
    lines.append("# TYPE synthetic_broken gauge")
    for stamp in range(start, end + 1, SCRAPE_INTERVAL_S):
        value = "NaN" if stamp == start + 86_400 else str(stamp - start)
        lines.append(f"synthetic_broken_total {value} {stamp}")
    lines.append("# TYPE up gauge")
    hole_start = start + 2 * 86_400
    for job in ("synthetic", "gappy"):
        for stamp in range(start, end + 1, SCRAPE_INTERVAL_S):
            if job == "gappy" and hole_start < stamp < hole_start + GAP_S:
                continue
            lines.append(f'up{{job="{job}"}} 1 {stamp}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"Prometheus exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"Prometheus at {url} was not ready within {READY_TIMEOUT_S:.0f} s")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synthetic]:
    missing = [name for name in ("prometheus", "promtool") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}; run: make install")
    folder: Path = tmp_path_factory.mktemp("synthetic-prometheus")

    # The series lie inside Prometheus's default retention of 15 days, so it keeps every block.
    end = int(time.time() - 7200) // SCRAPE_INTERVAL_S * SCRAPE_INTERVAL_S
    start = end - DAYS * 86_400
    counters = synthetic_counters(start, end)
    (folder / "series.om").write_text(openmetrics(start, end, counters))
    command = [
        "promtool", "tsdb", "create-blocks-from", "openmetrics",
        # A few large blocks: the default two-hour blocks are many times slower to write.
        f"--max-block-duration={DAYS * 24 + 24}h", "--quiet",
        str(folder / "series.om"), str(folder / "data"),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)

    (folder / "prometheus.yml").write_text(f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n")
    url = f"http://127.0.0.1:{free_port()}"
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    try:
        wait_until_ready(url, process)
        yield Synthetic(
            url=url,
            start=start,
            end=end,
            errors=sum(counter.true_increase for counter in counters if 'code="500"' in counter.labels),
            total=sum(counter.true_increase for counter in counters),
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def synthetic_source(synthetic: Synthetic, coverage_job: str = "synthetic") -> PrometheusSource:
    return PrometheusSource(
        synthetic.url, scrape_interval_s=SCRAPE_INTERVAL_S, coverage_selector=f'up{{job="{coverage_job}"}}'
    )


SYNTHETIC_SELECTORS = {"errors": 'synthetic_requests_total{code="500"}', "total": "synthetic_requests_total"}


def test_days_long_window_counts_every_request(synthetic: Synthetic) -> None:
    source = synthetic_source(synthetic)
    planned = source.plan(synthetic.start, synthetic.end)

    result = judged(
        source.evaluate(
            availability("synthetic", SYNTHETIC_SELECTORS), Phase.BASELINE, start=synthetic.start, end=synthetic.end
        )
    )

    assert len(split_range(planned)) == 2
    assert result.verdict == Verdict.PASS, result.message()
    assert result.samples == synthetic.total
    assert result.measured == pytest.approx(1.0 - synthetic.errors / synthetic.total, abs=1e-12)
    assert "2 chunk(s)" in (result.query or "")


def test_unsplit_days_long_query_is_rejected(synthetic: Synthetic) -> None:
    source = synthetic_source(synthetic)

    with pytest.raises(InconclusiveResult, match="11,000 points"):
        source.promql.query_range("synthetic_requests_total", source.plan(synthetic.start, synthetic.end))


def test_budget_share_follows_slo_period(synthetic: Synthetic) -> None:
    source = synthetic_source(synthetic)
    results = {}
    for period in ("30d", "7d"):
        spec = SloSpec.model_validate(
            {
                "name": f"burn-{period}",
                "kind": "burn-rate",
                "source": "prometheus",
                "phases": ["baseline"],
                "target": 0.99,
                "max_burn_rate": 6,
                "period": period,
                "prometheus": SYNTHETIC_SELECTORS,
            }
        )
        results[period] = judged(source.evaluate(spec, Phase.BASELINE, start=synthetic.start, end=synthetic.end))
    expected_rate = synthetic.errors / synthetic.total / 0.01

    assert results["30d"].measured == pytest.approx(expected_rate)
    assert results["7d"].measured == pytest.approx(expected_rate)
    assert results["30d"].budget_used_share == pytest.approx(expected_rate * DAYS / 30)
    assert results["7d"].budget_used_share == pytest.approx(expected_rate * DAYS / 7)


def test_nan_sample_is_inconclusive(synthetic: Synthetic) -> None:
    selectors = {"errors": "synthetic_broken_total", "total": "synthetic_broken_total"}

    result = judged(
        synthetic_source(synthetic).evaluate(
            availability("broken", selectors), Phase.BASELINE, start=synthetic.start, end=synthetic.end
        )
    )

    assert result.verdict == Verdict.INCONCLUSIVE
    assert "NaN" in result.reason


def test_scrape_gap_is_inconclusive(synthetic: Synthetic) -> None:
    result = judged(
        synthetic_source(synthetic, coverage_job="gappy").evaluate(
            availability("synthetic", SYNTHETIC_SELECTORS), Phase.BASELINE, start=synthetic.start, end=synthetic.end
        )
    )

    assert result.verdict == Verdict.INCONCLUSIVE
    assert f'gap of more than {3 * SCRAPE_INTERVAL_S} s in the scrapes of up{{job="gappy"}}' in result.reason
