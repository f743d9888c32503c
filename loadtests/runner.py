"""Out-of-process Locust runner.

Locust runs as a child process (``locust --headless``) because importing it patches the
interpreter with gevent, which breaks ssl, urllib3 and asyncio users in the harness. The
child gets its own process group, so `stop` ends its worker processes too, and every
running child is registered with `loadtests.reaper`, so an exception, SIGINT or SIGTERM
in the harness stops it as well. On Linux the child also gets SIGTERM from the kernel when
the harness dies, even by SIGKILL (see `parent_death_signal`).

Three layouts:
- one process (default), or ``processes=N`` for N worker processes on this machine;
- a master (``expect_workers=N``) with workers started elsewhere by `worker_command`
  (see `LocustWorker` for this machine). Workers send their per-second records to the
  master, so the statistics appear in the master's workdir wherever the workers run.

The user count follows a profile (`loadtests.profiles`). `set_users` changes it during the
run through a control file that the Locust shape reads at each tick.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from loadtests import reaper
from loadtests.exporter import StatsExporter
from loadtests.health import find_health_problems
from loadtests.profiles import (
    CONTROL_VARIABLE,
    RATE_VARIABLE,
    SHAPE_VARIABLE,
    LoadShapeSpec,
    SteadyShape,
    UserOverride,
)
from loadtests.records import CONNECTION_REFUSED_KIND, STATS_DIR_VARIABLE
from loadtests.stream import StatsStream
from stormgate.errors import LoadGeneratorError, TargetUnreachable, UsageError

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 10.0
"""Time Locust gets to stop after SIGTERM before the whole process group is killed."""
FIRST_RECORD_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 20
PR_SET_PDEATHSIG = 1
"""prctl option from <linux/prctl.h>: the signal a process gets when its parent dies."""


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """Return a `preexec_fn` that makes the child receive `sig` when this process dies; None off Linux.

    The kernel sends the signal when the thread that forked the child ends, not the whole
    process. The harness starts its load processes from the main thread, so the signal comes
    when the harness ends. A child started from another thread gets it when that thread ends.
    The setting survives exec but not fork, so the workers that Locust forks for
    ``--processes`` get no signal; the Locust master stops them when it gets SIGTERM.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Loaded here, in the parent, so the child between fork and exec only makes the call.
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork and prctl, and then no signal would ever come.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


def require_loopback(url: str, *, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Raise UsageError unless the URL's host resolves only to loopback addresses.

    `allowed_hosts` lists host names that the user named explicitly as load targets, such
    as the Service URL of a cluster target (`--load-url`). Only those may be outside loopback.
    """
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        raise UsageError(f"Load target URL {url!r} has no host; give a URL such as http://127.0.0.1:18080")
    if host in allowed_hosts:
        return
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as error:
        raise UsageError(f"Load target host {host!r} does not resolve ({error}); check the URL {url!r}") from error
    outside = sorted(address for address in addresses if not ipaddress.ip_address(address).is_loopback)
    if outside:
        raise UsageError(
            f"Load target {url!r} resolves to {', '.join(outside)}, which is not loopback. "
            "stormgate sends load only to 127.0.0.0/8 or ::1 unless the URL was given with --load-url."
        )


def locust_environment(*, stats_dir: Path | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a Locust child: this one, the repository on PYTHONPATH, the stats folder."""
    environment = dict(os.environ)
    # The repository root must be importable so the locustfile finds the loadtests package.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), environment.get("PYTHONPATH")]))
    if stats_dir is not None:
        environment[STATS_DIR_VARIABLE] = str(stats_dir)
    environment.update(extra or {})
    return environment


def worker_command(*, master_host: str, master_port: int, locustfile: Path = DEFAULT_LOCUSTFILE) -> list[str]:
    """Return the command line of a Locust worker that connects to a stormgate master.

    On another machine, run it from a clone of this repository with the same virtualenv:
    ``STORMGATE_STATS_DIR=- PYTHONPATH=. .venv/bin/python -m locust -f loadtests/locustfile.py
    --worker --master-host <master> --master-port <port>``. STORMGATE_STATS_DIR only needs to
    be set (to anything) so the worker sends its records to the master.
    """
    return [
        sys.executable, "-m", "locust",
        "-f", str(locustfile),
        "--worker",
        "--master-host", master_host,
        "--master-port", str(master_port),
        "--loglevel", "WARNING",
    ]  # fmt: skip


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
        shape: LoadShapeSpec | None = None,
        expect_workers: int = 0,
        master_bind_host: str = "127.0.0.1",
        master_bind_port: int = 5557,
        metrics_port: int | None = None,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        """Prepare a run; `start` or ``with`` launches it.

        `shape` replaces the steady profile of `users` at `spawn_rate` for `run_time_s`.
        `expect_workers` > 0 runs a master that waits for that many workers on
        `master_bind_host`:`master_bind_port`. `metrics_port` serves the statistics as
        Prometheus metrics on 127.0.0.1 while the run lasts.
        """
        if users < 1:
            raise UsageError(f"Locust users must be at least 1, got {users}")
        if processes < 1:
            raise UsageError(f"Locust processes must be at least 1, got {processes}")
        if expect_workers < 0:
            raise UsageError(f"expect_workers must be 0 (no master) or more, got {expect_workers}")
        if expect_workers and processes > 1:
            raise UsageError("Give either processes > 1 or expect_workers > 0, not both")
        if not locustfile.exists():
            raise UsageError(f"Locustfile {locustfile} does not exist; give the path of a locustfile")
        require_loopback(host, allowed_hosts=allowed_hosts)
        self.host = host
        self.users = users
        self.spawn_rate = spawn_rate
        self.run_time_s = run_time_s
        self.locustfile = locustfile
        self.processes = processes
        self.run_id = run_id
        self.shape: LoadShapeSpec = shape or SteadyShape(users=users, spawn_rate=spawn_rate, run_time_s=run_time_s)
        self.expect_workers = expect_workers
        self.master_bind_host = master_bind_host
        self.master_bind_port = master_bind_port
        self.metrics_port = metrics_port
        self.workdir = workdir
        self.stats_dir = workdir / "client-stats"
        self.log_path = workdir / "locust.log"
        self.control_path = workdir / "locust-control.json"
        self.stream = StatsStream(self.stats_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.ended_early: str | None = None
        self.exporter: StatsExporter | None = None
        self._override_sequence = 0

    def command(self) -> list[str]:
        # The profile shape decides users, spawn rate and run time, so those options are left out.
        command = [
            sys.executable, "-m", "locust",
            "-f", str(self.locustfile),
            "--headless",
            "--host", self.host,
            "--stop-timeout", "2",
            "--loglevel", "WARNING",
            "--only-summary",
        ]  # fmt: skip
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        if self.expect_workers:
            command += [
                "--master",
                "--expect-workers", str(self.expect_workers),
                "--expect-workers-max-wait", str(int(FIRST_RECORD_TIMEOUT_S)),
                "--master-bind-host", self.master_bind_host,
                "--master-bind-port", str(self.master_bind_port),
            ]  # fmt: skip
        return command

    def environment(self) -> dict[str, str]:
        return locust_environment(
            stats_dir=self.stats_dir,
            extra={
                SHAPE_VARIABLE: self.shape.model_dump_json(),
                CONTROL_VARIABLE: str(self.control_path),
                RATE_VARIABLE: repr(self.shape.rate_per_user),
            },
        )

    def start(self) -> None:
        self.stats_dir.mkdir(parents=True, exist_ok=True)
        self.control_path.unlink(missing_ok=True)
        command = self.command()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"$ {shlex.join(command)}\n".encode())
            log_file.flush()
            # preexec_fn runs after the setsid of start_new_session, so the group stays as it was.
            self.process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        reaper.register(self)
        logger.info(
            "Run %s: Locust started (pid %d) with a %s profile against %s for %.0f s.",
            self.run_id, self.process.pid, self.shape.kind, self.host, self.shape.duration_s,
        )  # fmt: skip
        if self.metrics_port is not None:
            exporter = StatsExporter(self.stream, port=self.metrics_port, run_id=self.run_id)
            exporter.start()
            self.exporter = exporter

    def set_users(self, users: int, *, spawn_rate: float | None = None) -> None:
        """Change the user count from the next shape tick (about one second) until the profile ends."""
        if users < 0:
            raise UsageError(f"Locust users must be 0 or more, got {users}")
        self._override_sequence += 1
        override = UserOverride(
            users=users, spawn_rate=spawn_rate or max(self.spawn_rate, 1.0), sequence=self._override_sequence
        )
        # Write then rename, so the shape never reads a half-written file.
        partial = self.control_path.with_suffix(".tmp")
        partial.write_text(override.model_dump_json(), encoding="utf-8")
        partial.replace(self.control_path)
        logger.info("Run %s: user count set to %d.", self.run_id, users)

    def wait_for_first_record(self, *, timeout_s: float = FIRST_RECORD_TIMEOUT_S) -> None:
        """Wait until the statistics stream has a record with requests; raise if Locust died.

        Raises TargetUnreachable when every request so far failed because the target
        refused the connection.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            self.stream.poll()
            stats = self.stream.window(0, time.time() + 2)
            if stats.requests:
                refused = stats.failure_kinds.get(CONNECTION_REFUSED_KIND, 0)
                if refused == stats.requests:
                    raise TargetUnreachable(
                        f"The load target {self.host} refused all {refused} connections; "
                        "check that it is running and listening on that port."
                    )
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
            self.ended_early = f"Locust ended early with exit code {code}"
            raise LoadGeneratorError(
                f"{self.ended_early}; the last lines of {self.log_path}:\n{self.log_tail()}\n"
                "Fix the error above (a traceback means the locustfile failed) and run again."
            )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def health_problems(self) -> list[str]:
        """Describe everything that makes the load unfit to judge by; empty when it was healthy.

        Covers a Locust process that ended early, a worker that stopped sending records,
        a target that refused connections, and a generator saturated on CPU.
        """
        self.stream.poll()
        problems: list[str] = []
        if self.ended_early is None and self.process is not None and not self.stopping:
            code = self.process.poll()
            if code is not None:
                self.ended_early = f"Locust ended early with exit code {code}"
        if self.ended_early is not None:
            problems.append(f"{self.ended_early}; see {self.log_path}.")
        problems += find_health_problems(self.stream.records, host=self.host)
        return problems

    def stop(self) -> int | None:
        """Stop Locust and its workers: SIGTERM to Locust, then SIGKILL to whatever is left of its group."""
        self.stopping = True
        reaper.unregister(self)
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            # Only the master: it sends its workers a quit message. SIGTERM to all of them at once
            # makes workers stop their users twice and log errors.
            try:
                os.kill(process.pid, signal.SIGTERM)
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
        if self.exporter is not None:
            self.exporter.stop()
            self.exporter = None
        logger.info("Run %s: Locust stopped with exit code %s.", self.run_id, process.returncode)
        return process.returncode

    def __enter__(self) -> LocustRunner:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class LocustWorker:
    """A Locust worker process on this machine that connects to a runner's master."""

    def __init__(
        self, *, master_host: str, master_port: int, workdir: Path, locustfile: Path = DEFAULT_LOCUSTFILE,
        run_id: str = "", index: int = 0,
    ) -> None:  # fmt: skip
        self.command = worker_command(master_host=master_host, master_port=master_port, locustfile=locustfile)
        self.log_path = workdir / f"locust-worker-{index}.log"
        self.workdir = workdir
        self.run_id = run_id
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Any value switches the plugin on; a worker sends its records to the master, not to this folder.
        environment = locust_environment(stats_dir=None, extra={STATS_DIR_VARIABLE: "-"})
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        reaper.register(self)
        logger.info("Run %s: Locust worker started (pid %d).", self.run_id, self.process.pid)

    def stop(self) -> int | None:
        reaper.unregister(self)
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=STOP_TIMEOUT_S)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                logger.warning("Run %s: Locust worker %d did not stop; killing it.", self.run_id, process.pid)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        return process.returncode

    def __enter__(self) -> LocustWorker:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
