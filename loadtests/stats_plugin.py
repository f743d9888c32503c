"""Locust plugin that streams per-second client statistics to the stormgate harness.

Importing this module from a locustfile registers the listeners. When the environment
variable STORMGATE_STATS_DIR is set, every Locust process that sends requests produces
one record per wall-clock second (UTC epoch). A record contains, per endpoint, requests,
failures by kind, an HDR latency histogram and the exact min and max, and for the
process, the user count and its CPU use. Seconds without requests produce a record too, so a missing second means the
generator stalled, not that it was idle. Without the variable the plugin does nothing,
so the locustfile still runs with plain ``locust -f``.

A request counts in the second in which it started, not the one in which it completed:
a request that hangs through a network partition belongs to the phase that caused the
hang. A request that completes after its start second was written goes into an extra
record for that second, marked ``late``, in the next flush that writes a new second.
Readers that sum records by ``ts`` count it there.

Where the records go:
- a single process (`LocalRunner`) appends them to ``stats-<pid>.jsonl`` in the folder;
- a worker (``--processes N`` or ``--worker`` on any machine) sends them to its master as
  a custom Locust message, and the master appends them to one file per worker. So the
  harness reads every record on the master's machine and no worker needs a shared disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import IO, Any

import gevent
import psutil  # type: ignore[import-untyped]
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests.records import STATS_DIR_VARIABLE, EndpointSecond, failure_kind

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.25
"""How often completed seconds are written. A regular record is written at most this long after
its second ends, plus transport. A late record waits for the first flush that writes a new second."""
MESSAGE_TYPE = "stormgate_second"
"""Custom Locust message that carries one worker's record to the master."""

__all__ = ["STATS_DIR_VARIABLE", "SecondWriter"]


class SecondWriter:
    """Per-second buckets of one Locust process, and the place their records go."""

    def __init__(self, environment: Environment, *, path: Path | None) -> None:
        self.environment = environment
        self.buckets: dict[int, dict[str, EndpointSecond]] = {}
        """Requests by start second, for the seconds not yet written."""
        self.late_buckets: dict[int, dict[str, EndpointSecond]] = {}
        """Requests by start second, for seconds already written: they go out as late records."""
        self.next_second = int(time.time())
        self.source = f"{socket.gethostname()}:{os.getpid()}"
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # The first call only starts the measurement.
        self.file: IO[str] | None = path.open("a", encoding="utf-8") if path is not None else None

    def record(
        self,
        name: str,
        response_time_ms: float,
        exception: BaseException | None,
        response: Any,
        *,
        start_time: float | None = None,
    ) -> None:
        """Count one completed request in the second of `start_time` (UTC epoch seconds).

        Without `start_time`, the start is the completion time minus the response time.
        """
        if start_time is None:
            start_time = time.time() - response_time_ms / 1000
        second = int(start_time)
        # NOTE: a request still in flight when the process quits is never counted, and a
        # reader that aggregates a window before its hung requests complete misses them.
        buckets = self.buckets if second >= self.next_second else self.late_buckets
        endpoints = buckets.get(second)
        if endpoints is None:
            endpoints = buckets[second] = {}
        endpoint = endpoints.get(name)
        if endpoint is None:
            # Not setdefault: a new HDR histogram allocates its counts array, about 0.1 ms each.
            endpoint = endpoints[name] = EndpointSecond()
        endpoint.record(response_time_ms, failure_kind(exception, response) if exception is not None else None)

    def flush(self, *, include_current: bool = False) -> None:
        """Emit the pending late records, then every completed second, empty ones included, in order.

        Late records go out only together with at least one new second (or on close), and
        before it. So a reader that keeps the record with the highest ``ts`` of a source as its
        newest, such as the exporter's user and CPU gauges, never keeps a late record.
        """
        last = int(time.time()) if include_current else int(time.time()) - 1
        runner = self.environment.runner
        users = runner.user_count if runner is not None else 0
        if self.next_second > last and not include_current:
            return
        for second in sorted(self.late_buckets):
            endpoints = self.late_buckets[second]
            late_line = {
                "ts": second,
                "pid": os.getpid(),
                "source": self.source,
                "users": 0,
                "cpu_percent": None,
                "late": True,
                "endpoints": {name: bucket.to_json() for name, bucket in endpoints.items()},
            }
            self.emit(late_line)
        self.late_buckets.clear()
        cpu_percent = self.process.cpu_percent(None)
        while self.next_second <= last:
            second = self.next_second
            endpoints = self.buckets.pop(second, {})
            line = {
                "ts": second,
                "pid": os.getpid(),
                "source": self.source,
                "users": users,
                "cpu_percent": cpu_percent,
                "endpoints": {name: bucket.to_json() for name, bucket in endpoints.items()},
            }
            self.emit(line)
            self.next_second += 1
        if self.file is not None:
            self.file.flush()

    def emit(self, line: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
            return
        runner = self.environment.runner
        if runner is not None:
            runner.send_message(MESSAGE_TYPE, line)

    def run_forever(self) -> None:
        while True:
            gevent.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def close(self) -> None:
        self.flush(include_current=True)
        if self.file is not None:
            self.file.close()


class MasterSink:
    """Files on the master that receive the records its workers send."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, IO[str]] = {}

    def receive(self, environment: Environment, msg: Any, **_kwargs: Any) -> None:
        line = msg.data
        source = str(line.get("source") or line.get("pid") or msg.node_id)
        stream_file = self.files.get(source)
        if stream_file is None:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source)
            stream_file = (self.folder / f"stats-{safe}.jsonl").open("a", encoding="utf-8")
            self.files[source] = stream_file
        stream_file.write(json.dumps(line, separators=(",", ":")) + "\n")
        stream_file.flush()

    def close(self) -> None:
        for stream_file in self.files.values():
            stream_file.close()
        self.files.clear()


_writer: SecondWriter | None = None
_sink: MasterSink | None = None


def _quit_on_sigterm(environment: Environment) -> None:
    # NOTE: a headless Locust 2.47 with a shape class installs its own SIGTERM handler only
    # after the shape ends, so until then SIGTERM would kill it without the quitting event
    # (no summary, no last record). Quitting the runner ends the shape, and Locust then
    # shuts down as usual.
    def quit_runner() -> None:
        logger.info("SIGTERM received; stopping the load test.")
        if environment.runner is not None:
            environment.runner.quit()

    gevent.signal_handler(signal.SIGTERM, quit_runner)


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    global _writer, _sink
    runner = environment.runner
    if environment.shape_class is not None and not isinstance(runner, WorkerRunner):
        _quit_on_sigterm(environment)
    stats_dir = os.environ.get(STATS_DIR_VARIABLE)
    if not stats_dir:
        return
    if isinstance(runner, MasterRunner):
        # A master sends no requests; it only stores what its workers send.
        Path(stats_dir).mkdir(parents=True, exist_ok=True)
        _sink = MasterSink(Path(stats_dir))
        runner.register_message(MESSAGE_TYPE, _sink.receive)
        logger.info("Storing the per-second statistics of every worker in %s.", stats_dir)
        return
    if isinstance(runner, WorkerRunner):
        _writer = SecondWriter(environment, path=None)
        logger.info("Sending per-second statistics to the master as %s.", _writer.source)
    else:
        path = Path(stats_dir) / f"stats-{os.getpid()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        _writer = SecondWriter(environment, path=path)
        logger.info("Streaming per-second statistics to %s.", path)
    gevent.spawn(_writer.run_forever)


def _on_request(
    name: str,
    response_time: float,
    exception: BaseException | None = None,
    response: Any = None,
    start_time: float | None = None,
    **_kwargs: Any,
) -> None:
    # Locust 2.x HttpSession and FastHttpSession pass `start_time` as epoch seconds;
    # requests fired by custom clients may leave it out.
    if _writer is not None:
        _writer.record(name, response_time, exception, response, start_time=start_time)


def _on_quitting(**_kwargs: Any) -> None:
    if _writer is not None:
        _writer.close()
    if _sink is not None:
        _sink.close()


events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.request.add_listener(_on_request)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]
