"""Traffic flood: burst traffic on top of the running load profile, as fast as the machine sends it.

The flood runs wrk (``/usr/bin/wrk``) when it is installed, because one wrk thread sends
several times more requests per core than one Locust process (see benchmarks/README.md).
Without wrk it falls back to Locust (`loadtests/flood_locustfile.py`) with one process
per thread. Both are bounded
by `FloodSpec.duration_s` and by `FloodSpec.max_requests`, and both send only to loopback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loadtests import reaper
from loadtests.profiles import FLOOD_MAX_PER_USER_VARIABLE, FLOOD_PATH_VARIABLE
from loadtests.records import aggregate
from loadtests.runner import locust_environment, parent_death_signal, require_loopback
from loadtests.stream import StatsStream
from stormgate.errors import LoadGeneratorError, MissingDependency, UsageError

logger = logging.getLogger(__name__)

FLOOD_LOCUSTFILE = Path(__file__).resolve().parent / "flood_locustfile.py"
STOP_TIMEOUT_S = 10.0
"""Time the flood engine gets to report after SIGINT or SIGTERM before it is killed."""
END_GRACE_S = 15.0
"""Time beyond `duration_s` that `wait` allows for startup and the final report."""

# The request is formatted once per thread: a Lua call per request costs about a tenth of
# wrk's rate, formatting each request about a quarter (wrk 4.1 on loopback).
WRK_SCRIPT = """\
local limit = {limit}
local sent = 0
local cached = nil
request = function()
  sent = sent + 1
  if sent > limit then wrk.thread:stop() end
  if cached == nil then cached = wrk.format() end
  return cached
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nSTORMGATE {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class FloodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duration_s: float = Field(gt=0.0, le=3600.0)
    connections: int = Field(default=50, ge=1, le=10_000)
    """Open connections (wrk) or users (Locust)."""
    threads: int = Field(default=1, ge=1, le=64)
    """wrk threads, or Locust processes; each uses at most one core."""
    engine: Literal["auto", "wrk", "locust"] = "auto"
    """``auto`` takes wrk when it is installed and Locust otherwise."""
    path: str = Field(default="/work", pattern=r"^/")
    max_requests: int = Field(default=10_000_000, ge=1)
    """Upper bound on the requests the flood sends; it stops early when it reaches it."""


class FloodResult(BaseModel):
    engine: Literal["wrk", "locust"]
    requests: int
    errors: int
    """Requests that failed: connection errors, timeouts and responses other than 2xx or 3xx."""
    achieved_rps: float
    duration_s: float
    """Time during which the engine sent requests."""


def choose_engine(engine: Literal["auto", "wrk", "locust"]) -> Literal["wrk", "locust"]:
    if engine == "locust":
        return "locust"
    if shutil.which("wrk"):
        return "wrk"
    if engine == "wrk":
        raise MissingDependency("The flood engine wrk is not installed; install the Debian package wrk or use 'auto'")
    return "locust"


class Flood:
    """One flood run; use as a context manager so its processes are always reaped."""

    def __init__(
        self, url: str, spec: FloodSpec, *, workdir: Path, run_id: str = "", allowed_hosts: tuple[str, ...] = ()
    ) -> None:
        require_loopback(url, allowed_hosts=allowed_hosts)
        self.url = url.rstrip("/")
        self.spec = spec
        self.workdir = workdir
        self.run_id = run_id
        self.engine: Literal["wrk", "locust"] = choose_engine(spec.engine)
        self.log_path = workdir / f"flood-{self.engine}.log"
        self.stats_dir = workdir / "flood-stats"
        self.process: subprocess.Popen[bytes] | None = None
        self._started_monotonic = 0.0
        self._ended_monotonic = 0.0
        self._result: FloodResult | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        spec = self.spec
        duration = f"{max(1, math.ceil(spec.duration_s))}s"
        if self.engine == "wrk":
            script = self.workdir / "flood.lua"
            script.write_text(WRK_SCRIPT.format(limit=math.ceil(spec.max_requests / spec.threads)), encoding="utf-8")
            connections = max(spec.connections, spec.threads)  # wrk needs a connection per thread.
            return [
                "wrk", "-t", str(spec.threads), "-c", str(connections), "-d", duration,
                "-s", str(script), self.url + spec.path,
            ]  # fmt: skip
        command = [
            sys.executable, "-m", "locust", "-f", str(FLOOD_LOCUSTFILE), "--headless",
            "--host", self.url, "-u", str(spec.connections), "-r", str(spec.connections),
            "--run-time", duration, "--stop-timeout", "1", "--loglevel", "WARNING", "--only-summary",
        ]  # fmt: skip
        if spec.threads > 1:
            command += ["--processes", str(spec.threads)]
        return command

    def start(self) -> None:
        if self.process is not None:
            raise UsageError("This flood was already started; create a new Flood for another run")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        environment = locust_environment(
            stats_dir=self.stats_dir,
            extra={
                FLOOD_PATH_VARIABLE: self.spec.path,
                FLOOD_MAX_PER_USER_VARIABLE: str(math.ceil(self.spec.max_requests / self.spec.connections)),
            },
        )
        with self.log_path.open("ab") as log_file:
            # The engine gets SIGTERM when the harness dies, so a killed harness leaves no flood running.
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        self._started_monotonic = time.monotonic()
        reaper.register(self)
        logger.info(
            "Run %s: %s flood started (pid %d) against %s%s for %.0f s with %d connections.",
            self.run_id, self.engine, self.process.pid, self.url, self.spec.path,
            self.spec.duration_s, self.spec.connections,
        )  # fmt: skip

    def wait(self, timeout_s: float | None = None) -> FloodResult:
        """Wait for the flood to end by itself, then return its result; stop it after the timeout."""
        process = self._require_started()
        limit_s = timeout_s if timeout_s is not None else self.spec.duration_s + END_GRACE_S
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            logger.warning("Run %s: flood still running after %.0f s; stopping it.", self.run_id, limit_s)
        return self.stop()

    def stop(self) -> FloodResult:
        """Stop the flood (a no-op once it ended) and return its result."""
        process = self._require_started()
        reaper.unregister(self)
        if process.poll() is None:
            # wrk prints its summary on SIGINT; Locust shuts down cleanly on SIGTERM.
            graceful = signal.SIGINT if self.engine == "wrk" else signal.SIGTERM
            try:
                # Only the parent: a Locust master sends its workers a quit message, and wrk has no children.
                os.kill(process.pid, graceful)
                process.wait(timeout=STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                logger.warning("Run %s: flood did not stop within %.0f s; killing it.", self.run_id, STOP_TIMEOUT_S)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        if not self._ended_monotonic:
            self._ended_monotonic = time.monotonic()
        if self._result is None:
            self._result = self._read_result()
            logger.info(
                "Run %s: %s flood sent %d requests (%d failed) at %.0f requests/s.",
                self.run_id, self.engine, self._result.requests, self._result.errors, self._result.achieved_rps,
            )  # fmt: skip
        return self._result

    def result(self) -> FloodResult:
        if self._result is None:
            raise UsageError("The flood has no result yet; call wait() or stop() first")
        return self._result

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise UsageError("The flood was not started; call start() or use it as a context manager")
        return self.process

    def _read_result(self) -> FloodResult:
        elapsed_s = self._ended_monotonic - self._started_monotonic
        if self.engine == "wrk":
            return self._read_wrk_result(elapsed_s)
        return self._read_locust_result(elapsed_s)

    def _read_wrk_result(self, elapsed_s: float) -> FloodResult:
        text = self.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("STORMGATE ")]
        if not lines:
            tail = "\n".join(text.splitlines()[-10:])
            raise LoadGeneratorError(f"wrk ended without its summary (exit code {self.process_code}); log:\n{tail}")
        summary = json.loads(lines[-1].removeprefix("STORMGATE "))
        # NOTE: wrk keeps running until its duration even when every thread reached max_requests,
        # so a flood bounded by count reports its rate averaged over the whole duration.
        duration_s = summary["duration_us"] / 1_000_000 or elapsed_s
        errors = sum(summary[kind] for kind in ("connect", "read", "write", "status", "timeout"))
        return FloodResult(
            engine="wrk", requests=summary["requests"], errors=errors,
            achieved_rps=summary["requests"] / duration_s if duration_s > 0 else 0.0, duration_s=duration_s,
        )  # fmt: skip

    def _read_locust_result(self, elapsed_s: float) -> FloodResult:
        stream = StatsStream(self.stats_dir)
        if self.stats_dir.exists():
            stream.poll()
        stats = aggregate(stream.records)
        busy = [second for second, (requests, _failures) in stats.seconds.items() if requests]
        # Seconds with requests exclude Locust's start-up time, which would understate the rate.
        duration_s = float(max(busy) - min(busy) + 1) if busy else elapsed_s
        return FloodResult(
            engine="locust", requests=stats.requests, errors=stats.failures,
            achieved_rps=stats.requests / duration_s if duration_s > 0 else 0.0, duration_s=duration_s,
        )  # fmt: skip

    @property
    def process_code(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def __enter__(self) -> Flood:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.process is None:
            return
        try:
            self.stop()
        except LoadGeneratorError:
            if kind is None:
                raise
            logger.exception("Run %s: reading the flood result failed while handling another error.", self.run_id)
