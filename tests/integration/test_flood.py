"""The traffic flood sends at a measured rate, respects its bounds and leaves no process behind.

The target is HAProxy answering every request itself (``http-request return``), so the
flood engine, not the target, limits the rate.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from loadtests.flood import Flood, FloodSpec
from loadtests.stream import StatsStream
from stormgate.errors import UsageError
from tests.conftest import free_port

HAPROXY_CONFIG = """\
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend flood_target
  bind 127.0.0.1:{port}
  http-request return status 200 content-type text/plain string "ok"
"""

requires_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
requires_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed")
    port = free_port()
    config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port))
    process = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url + "/work", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def process_tree(flood: Flood) -> list[int]:
    assert flood.process is not None
    root = psutil.Process(flood.process.pid)
    return [root.pid] + [child.pid for child in root.children(recursive=True)]


def all_ended(pids: list[int], *, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie" for pid in pids):
            return True
        time.sleep(0.2)
    return False


@requires_haproxy
@requires_wrk
def test_wrk_flood_reports_rate(target: str, tmp_path: Path) -> None:
    flood = Flood(target, FloodSpec(duration_s=3, connections=20, engine="wrk"), workdir=tmp_path, run_id="t")

    with flood:
        pids = process_tree(flood)
        result = flood.wait()

    assert result.engine == "wrk"
    assert result.errors == 0
    assert result.requests > 1000
    assert result.achieved_rps == pytest.approx(result.requests / result.duration_s)
    assert 2.5 <= result.duration_s <= 4.5
    assert not flood.running
    assert all_ended(pids)


@requires_haproxy
def test_locust_flood_reports_rate(target: str, tmp_path: Path) -> None:
    flood = Flood(target, FloodSpec(duration_s=4, connections=10, engine="locust"), workdir=tmp_path)

    with flood:
        pids = process_tree(flood)
        result = flood.wait()

    assert result.engine == "locust"
    assert result.errors == 0
    assert result.requests > 100
    assert result.achieved_rps > 0
    assert all_ended(pids)


def wait_for_first_requests(flood: Flood, *, timeout_s: float) -> None:
    if flood.engine == "wrk":
        time.sleep(1)  # wrk sends from its first millisecond and reports only at the end.
        return
    deadline = time.monotonic() + timeout_s
    stream = StatsStream(flood.stats_dir)
    while time.monotonic() < deadline:
        if flood.stats_dir.exists():
            stream.poll()
        if any(endpoint.requests for record in stream.records for endpoint in record.endpoints.values()):
            return
        time.sleep(0.5)


@requires_haproxy
@pytest.mark.parametrize("engine", ["wrk", "locust"])
def test_flood_stops_early_and_reaps(target: str, tmp_path: Path, engine: str) -> None:
    if engine == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    flood = Flood(target, FloodSpec(duration_s=60, connections=5, threads=2, engine=engine), workdir=tmp_path)  # type: ignore[arg-type]

    with flood:
        # Locust with two processes needs seconds to send its first request, more on a loaded machine.
        wait_for_first_requests(flood, timeout_s=30)
        pids = process_tree(flood)
        assert flood.running
        started = time.monotonic()
        result = flood.stop()

    assert time.monotonic() - started < 15
    assert result.requests > 0
    assert result.duration_s < 30
    assert all_ended(pids)


@requires_haproxy
@requires_wrk
def test_max_requests_bounds_wrk_flood(target: str, tmp_path: Path) -> None:
    spec = FloodSpec(duration_s=3, connections=4, threads=2, engine="wrk", max_requests=1000)

    with Flood(target, spec, workdir=tmp_path) as flood:
        result = flood.wait()

    assert 0 < result.requests <= 1000


def test_exit_of_with_block_reaps_flood(tmp_path: Path) -> None:
    # Nothing listens on this port, so the flood only fails to connect; no traffic leaves loopback.
    url = f"http://127.0.0.1:{free_port()}"
    with (
        pytest.raises(RuntimeError, match="harness failed"),
        Flood(url, FloodSpec(duration_s=60), workdir=tmp_path) as flood,
    ):
        pids = process_tree(flood)
        raise RuntimeError("harness failed")

    assert not flood.running
    assert all_ended(pids)


@pytest.mark.parametrize("url", ["http://192.0.2.10:8080", "http://example.invalid"])
def test_flood_rejects_non_loopback_target(url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        Flood(url, FloodSpec(duration_s=1), workdir=tmp_path)


def test_result_before_end_is_usage_error(tmp_path: Path) -> None:
    flood = Flood("http://127.0.0.1:9", FloodSpec(duration_s=1), workdir=tmp_path)

    with pytest.raises(UsageError, match="no result yet"):
        flood.result()
