"""Out-of-process Locust runner.

Locust runs as a child process (``locust --headless``) because importing it patches the
interpreter with gevent, which breaks ssl, urllib3 and asyncio users in the harness. The
child gets its own process group, so `stop` ends its worker processes too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

from loadtests.stats_plugin import STATS_DIR_VARIABLE
from loadtests.stream import StatsStream
from stormgate.errors import LoadGeneratorError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 10.0
"""Time Locust gets to stop after SIGTERM before the whole process group is killed."""
FIRST_RECORD_TIMEOUT_S = 20.0


def require_loopback(url: str) -> None:
    """Raise UsageError unless the URL's host resolves only to loopback addresses.

    NOTE: the sandbox target only ever sends load to loopback; a cluster target must
    pass its own allowlist before reaching a non-loopback host.
    """
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise UsageError(f"Load target URL {url!r} has no host; give a URL such as http://127.0.0.1:18080")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as error:
        raise UsageError(f"Load target host {host!r} does not resolve ({error}); check the URL {url!r}") from error
    outside = sorted(address for address in addresses if not ipaddress.ip_address(address).is_loopback)
    if outside:
        raise UsageError(
            f"Load target {url!r} resolves to {', '.join(outside)}, which is not loopback. "
            "The sandbox target sends load only to 127.0.0.0/8 or ::1."
        )


class LocustRunner:
    """One headless Locust run; use as a context manager so the process is always reaped."""

    def __init__(
        self,
        *,
        host: str,
        users: int,
        spawn_rate: float,
        run_time_s: float,
        workdir: Path,
        locustfile: Path = DEFAULT_LOCUSTFILE,
        processes: int = 1,
        run_id: str = "",
    ) -> None:
        if users < 1:
            raise UsageError(f"Locust users must be at least 1, got {users}")
        if processes < 1:
            raise UsageError(f"Locust processes must be at least 1, got {processes}")
        if not locustfile.exists():
            raise UsageError(f"Locustfile {locustfile} does not exist; give the path of a locustfile")
        require_loopback(host)
        self.host = host
        self.users = users
        self.spawn_rate = spawn_rate
        self.run_time_s = run_time_s
        self.locustfile = locustfile
        self.processes = processes
        self.run_id = run_id
        self.stats_dir = workdir / "client-stats"
        self.log_path = workdir / "locust.log"
        self.stream = StatsStream(self.stats_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--headless",
            "--host", self.host,
            "--users", str(self.users),
            "--spawn-rate", str(self.spawn_rate),
            "--run-time", f"{int(self.run_time_s + 0.999)}s",
            "--stop-timeout", "2",
            "--loglevel", "WARNING",
            "--only-summary",
        ]  # fmt: skip
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        return command

    def start(self) -> None:
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, STATS_DIR_VARIABLE: str(self.stats_dir)}
        # The repository root must be importable so the locustfile finds loadtests.stats_plugin.
        root = str(Path(__file__).resolve().parent.parent)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, env=environment, start_new_session=True
            )
        logger.info(
            "Run %s: Locust started (pid %d) with %d users against %s for %.0f s.",
            self.run_id, self.process.pid, self.users, self.host, self.run_time_s,
        )  # fmt: skip

    def wait_for_first_record(self, *, timeout_s: float = FIRST_RECORD_TIMEOUT_S) -> None:
        """Wait until the statistics stream has a record with requests; raise if Locust died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            self.stream.poll()
            if any(record.endpoints for record in self.stream.records):
                return
            time.sleep(0.2)
        raise LoadGeneratorError(
            f"Locust sent no request within {timeout_s:.0f} s against {self.host}. See {self.log_path}."
        )

    def check_alive(self) -> None:
        """Raise LoadGeneratorError if Locust ended while it should still be running."""
        if self.process is None or self.stopping:
            return
        code = self.process.poll()
        if code is not None:
            raise LoadGeneratorError(
                f"Locust ended early with exit code {code}; the last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> int | None:
        """Stop Locust and its workers: SIGTERM to the group, SIGKILL after a timeout."""
        self.stopping = True
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("Run %s: Locust did not stop within %.0f s; killing it.", self.run_id, STOP_TIMEOUT_S)
        # Workers of --processes live in the same group and may outlive the master.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        self.stream.poll()
        logger.info("Run %s: Locust stopped with exit code %s.", self.run_id, process.returncode)
        return process.returncode

    def __enter__(self) -> LocustRunner:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
