"""The out-of-process Locust runner: statistics stream, user changes, distribution, health, cleanup.

The target is Python's own HTTP server serving a file named ``work``, in a child process
on a free loopback port: a real server that starts in well under a second.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from loadtests.health import find_health_problems
from loadtests.records import EndpointRecord, SecondRecord
from loadtests.runner import LocustRunner, LocustWorker
from stormgate.errors import LoadGeneratorError, TargetUnreachable
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_for_port(port: int, *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/work", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"test target on port {port} did not answer within {timeout_s} s")


def start_target(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "work").write_text("ok\n")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, url = start_target(tmp_path_factory.mktemp("target"))
    yield url
    server.terminate()
    server.wait(timeout=10)


def pids_gone(pids: list[int], *, timeout_s: float) -> list[int]:
    """Wait until every pid has ended (a zombie counts as ended); return those still alive."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        time.sleep(0.2)
    return alive


# ----- one steady run, observed by several tests -----


@dataclass
class ObservedRun:
    records: list[SecondRecord]
    started_wall: float
    stopped_wall: float
    metrics: str
    problems: list[str]


@pytest.fixture(scope="module")
def observed_run(target: str, tmp_path_factory: pytest.TempPathFactory) -> ObservedRun:
    runner = LocustRunner(
        host=target, users=4, spawn_rate=20, run_time_s=60, processes=2, metrics_port=0,
        workdir=tmp_path_factory.mktemp("steady"), run_id="steady",
    )  # fmt: skip
    started_wall = time.time()
    with runner:
        runner.wait_for_first_record()
        time.sleep(3)
        runner.set_users(8, spawn_rate=50)
        time.sleep(5)
        assert runner.exporter is not None
        metrics = urllib.request.urlopen(runner.exporter.url, timeout=10).read().decode()
        problems = runner.health_problems()
    return ObservedRun(runner.stream.records, started_wall, time.time(), metrics, problems)


def records_by_source(records: list[SecondRecord]) -> dict[str, list[int]]:
    """Return the seconds of the regular records of each source; late records repeat a second."""
    seconds: dict[str, list[int]] = defaultdict(list)
    for record in records:
        if not record.late:
            seconds[record.source_key].append(record.ts)
    return seconds


def test_stream_has_record_per_process(observed_run: ObservedRun) -> None:
    assert len(records_by_source(observed_run.records)) == 2


def test_stream_seconds_have_no_gaps(observed_run: ObservedRun) -> None:
    for source, seconds in records_by_source(observed_run.records).items():
        assert len(seconds) >= 6, source
        assert sorted(seconds) == list(range(min(seconds), max(seconds) + 1)), source


def test_stream_seconds_follow_wall_clock(observed_run: ObservedRun) -> None:
    seconds = [record.ts for record in observed_run.records]

    assert min(seconds) >= int(observed_run.started_wall) - 1
    assert max(seconds) <= observed_run.stopped_wall + 1


def test_records_carry_cpu_percent(observed_run: ObservedRun) -> None:
    assert all(record.cpu_percent is not None for record in observed_run.records if not record.late)


def test_set_users_changes_user_count(observed_run: ObservedRun) -> None:
    users_per_second: dict[int, int] = defaultdict(int)
    for record in observed_run.records:
        users_per_second[record.ts] += record.users

    assert 4 in users_per_second.values()
    assert max(users_per_second.values()) == 8


def test_exporter_counts_match_histogram(observed_run: ObservedRun) -> None:
    samples = {}
    for line in observed_run.metrics.splitlines():
        if line.startswith(("stormgate_client_requests_total{", "stormgate_client_latency_seconds_count{")):
            name, value = line.rsplit(" ", 1)
            samples[name.split("{")[0]] = float(value)

    assert samples["stormgate_client_requests_total"] > 0
    assert samples["stormgate_client_latency_seconds_count"] == samples["stormgate_client_requests_total"]
    assert 'stormgate_client_users{run_id="steady"' in observed_run.metrics


def test_healthy_run_has_no_problems(observed_run: ObservedRun) -> None:
    assert observed_run.problems == []


# ----- distributed -----


def test_master_collects_records_of_two_workers(target: str, tmp_path: Path) -> None:
    port = free_port()
    runner = LocustRunner(
        host=target, users=4, spawn_rate=20, run_time_s=60, workdir=tmp_path, expect_workers=2,
        master_bind_port=port, run_id="distributed",
    )  # fmt: skip
    workers = [LocustWorker(master_host="127.0.0.1", master_port=port, workdir=tmp_path, index=i) for i in range(2)]
    with runner, workers[0], workers[1]:
        runner.wait_for_first_record(timeout_s=60)
        time.sleep(3)
        runner.stream.poll()
        sources = records_by_source(runner.stream.records)
        pids = [worker.process.pid for worker in workers if worker.process is not None]

    assert len(sources) == 2
    assert all(any(source.endswith(f":{pid}") for source in sources) for pid in pids)
    assert runner.stream.window(0, time.time() + 1).requests > 0


# ----- requests counted by start second -----

SLOW_TARGET = textwrap.dedent(
    """
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port, slow_log, slow_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/slow":
                with open(slow_log, "a") as log:
                    log.write(f"{time.time()}\\n")
                time.sleep(slow_s)
            body = b"ok\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)

SLOW_LOCUSTFILE = textwrap.dedent(
    """
    import time
    from locust import FastHttpUser, constant, task
    import loadtests.stats_plugin
    from loadtests.shapes import EnvironmentShape

    STARTED = time.monotonic()

    class ProbeUser(FastHttpUser):
        wait_time = constant(0.1)
        slow_sent = False

        @task
        def probe(self):
            # One request to /slow, 2 s into the run, while the other user goes on with /fast.
            if not ProbeUser.slow_sent and time.monotonic() - STARTED > 2:
                ProbeUser.slow_sent = True
                self.client.get("/slow", name="/slow")
            else:
                self.client.get("/fast", name="/fast")
    """
)


def test_slow_request_counts_in_start_second(tmp_path: Path) -> None:
    slow_s = 3.0
    slow_log = tmp_path / "slow-requests.log"
    (tmp_path / "slow_target.py").write_text(SLOW_TARGET)
    locustfile = tmp_path / "slow_locustfile.py"
    locustfile.write_text(SLOW_LOCUSTFILE)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(tmp_path / "slow_target.py"), str(port), str(slow_log), str(slow_s)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        runner = LocustRunner(
            host=f"http://127.0.0.1:{port}", users=2, spawn_rate=10, run_time_s=60, workdir=tmp_path / "work",
            locustfile=locustfile,
        )  # fmt: skip
        with runner:
            runner.wait_for_first_record()
            deadline = time.monotonic() + 30
            while not slow_log.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert slow_log.exists(), runner.log_tail()
            received_wall = float(slow_log.read_text().split()[0])
            # Wait until the slow request has completed and the plugin has flushed a few times more.
            time.sleep(max(0.0, received_wall + slow_s + 2.5 - time.time()))
            runner.stream.poll()
            problems = runner.health_problems()
    finally:
        server.terminate()
        server.wait(timeout=10)

    records = runner.stream.records
    slow_records = [record for record in records if "/slow" in record.endpoints]
    completed_second = int(received_wall + slow_s)
    assert len(slow_records) == 1
    slow_record = slow_records[0]
    # On loopback the client starts the request well under 0.5 s before the server receives it.
    assert int(received_wall - 0.5) <= slow_record.ts <= int(received_wall)
    assert slow_record.ts < completed_second
    assert slow_record.late
    assert slow_record.endpoints["/slow"].max_us >= slow_s * 1_000_000
    assert runner.stream.window(slow_record.ts, slow_record.ts + 1).latency_ms(1.0) >= slow_s * 1000
    assert runner.stream.window(completed_second, completed_second + 1).latency_ms(1.0) < slow_s * 1000
    for source, seconds in records_by_source(records).items():
        assert sorted(seconds) == list(range(min(seconds), max(seconds) + 1)), source
    assert problems == []


# ----- errors and health -----


def test_bad_locustfile_raises_with_traceback(target: str, tmp_path: Path) -> None:
    locustfile = tmp_path / "broken_locustfile.py"
    locustfile.write_text("import loadtests.stats_plugin\nimport no_such_module_for_stormgate\n")
    runner = LocustRunner(host=target, users=1, spawn_rate=1, run_time_s=60, workdir=tmp_path, locustfile=locustfile)

    started = time.monotonic()
    with runner, pytest.raises(LoadGeneratorError) as raised:
        runner.wait_for_first_record(timeout_s=120)

    assert time.monotonic() - started < 60
    assert "ModuleNotFoundError" in str(raised.value)
    assert "no_such_module_for_stormgate" in str(raised.value)


def test_refused_connections_name_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    runner = LocustRunner(host=url, users=3, spawn_rate=10, run_time_s=60, workdir=tmp_path)

    with runner:
        with pytest.raises(TargetUnreachable) as raised:
            runner.wait_for_first_record()
        time.sleep(5)
        problems = runner.health_problems()

    assert url in str(raised.value)
    assert any("refused every connection" in problem and url in problem for problem in problems)


def test_crash_raises_and_is_a_problem(target: str, tmp_path: Path) -> None:
    runner = LocustRunner(host=target, users=2, spawn_rate=10, run_time_s=60, workdir=tmp_path)

    with runner:
        runner.wait_for_first_record()
        assert runner.process is not None
        runner.process.send_signal(signal.SIGKILL)
        runner.process.wait(timeout=10)
        with pytest.raises(LoadGeneratorError, match="exit code -9"):
            runner.check_alive()
        problems = runner.health_problems()

    assert any("ended early" in problem for problem in problems)


def test_vanished_worker_is_a_problem(target: str, tmp_path: Path) -> None:
    runner = LocustRunner(host=target, users=4, spawn_rate=20, run_time_s=60, workdir=tmp_path, processes=2)

    with runner:
        runner.wait_for_first_record()
        assert runner.process is not None
        workers = psutil.Process(runner.process.pid).children()
        assert len(workers) == 2
        workers[0].kill()
        time.sleep(7)
        problems = runner.health_problems()

    assert any(f":{workers[0].pid} stopped sending statistics" in problem for problem in problems)


def record(ts: int, *, source: str = "a:1", requests: int = 10, refused: int = 0, cpu: float = 20.0) -> SecondRecord:
    endpoint = EndpointRecord(requests=requests, failures={"ConnectionRefusedError": refused} if refused else {},
                              histogram="")  # fmt: skip
    return SecondRecord(ts=ts, pid=1, source=source, users=1, endpoints={"/work": endpoint}, cpu_percent=cpu)


def test_saturated_cpu_is_a_problem() -> None:
    records = [record(ts, cpu=95.0 if 3 <= ts < 9 else 30.0) for ts in range(12)]

    problems = find_health_problems(records, host="http://127.0.0.1:1")

    assert len(problems) == 1
    assert "more than 90% CPU for 6 s" in problems[0]


def test_short_cpu_burst_is_tolerated() -> None:
    records = [record(ts, cpu=99.0 if ts in (2, 3, 5, 6) else 30.0) for ts in range(12)]

    assert find_health_problems(records, host="http://127.0.0.1:1") == []


def test_no_records_is_a_problem() -> None:
    assert find_health_problems([], host="http://127.0.0.1:1") == [
        "Locust wrote no per-second statistics for the run against http://127.0.0.1:1."
    ]


# ----- cleanup on every exit path of the harness -----

HARNESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import psutil
    sys.path.insert(0, {repo!r})
    from loadtests.runner import LocustRunner

    mode, host, workdir, pid_file = sys.argv[1:5]
    runner = LocustRunner(host=host, users=2, spawn_rate=10, run_time_s=120, workdir=Path(workdir), processes=2)

    def publish():
        master = psutil.Process(runner.process.pid)
        pids = [master.pid] + [child.pid for child in master.children(recursive=True)]
        Path(pid_file).write_text(" ".join(map(str, pids)))

    if mode == "with-block-exception":
        with runner:
            runner.wait_for_first_record()
            publish()
            raise RuntimeError("harness failed inside the with block")
    runner.start()
    runner.wait_for_first_record()
    publish()
    if mode == "exception":
        raise RuntimeError("harness failed outside any with block")
    time.sleep(120)
    """
)


@pytest.mark.parametrize(
    ("mode", "send"),
    [
        ("with-block-exception", None),
        ("exception", None),
        ("signal", signal.SIGINT),
        ("signal", signal.SIGTERM),
    ],
    ids=["with-block-exception", "exception", "sigint", "sigterm"],
)
def test_no_locust_left_after_harness_exit(target: str, tmp_path: Path, mode: str, send: signal.Signals | None) -> None:
    script = tmp_path / "harness.py"
    script.write_text(HARNESS.format(repo=str(REPO)))
    pid_file = tmp_path / "pids"
    harness = subprocess.Popen(
        [sys.executable, str(script), mode, target, str(tmp_path / "work"), str(pid_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and harness.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), harness.communicate(timeout=30)[0].decode()
        time.sleep(0.3)
        pids = [int(pid) for pid in pid_file.read_text().split()]
        assert len(pids) == 3
        if send is not None:
            harness.send_signal(send)
        harness.wait(timeout=60)
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()

    assert harness.returncode != 0
    assert pids_gone(pids, timeout_s=15) == []
