"""Start, stop and inspect the sandbox: the local staging environment of stormgate.

A sandbox is made of real components: replicas of the demo service, kept alive by
supervisord, behind HAProxy with active health checks, scraped by Prometheus every
second. Replicas and Prometheus run in a network namespace of their own, each replica
on its own loopback address, so a partition is a real packet drop inside that namespace.
HAProxy runs on the host and reaches into the namespace with its `namespace` keyword,
which makes the load balancer and Prometheus reachable on the host's loopback.

NOTE: the sandbox needs root for `ip netns`. A rootless variant in a user namespace is
not built yet, so as a non-root user `up` raises SandboxError with that reason.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator
from supervisor.xmlrpc import SupervisorTransport

from stormgate.errors import MissingDependency, PortInUse, SandboxError, UsageError

logger = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"

REPLICA_PORT = 8080
EXPORTER_PORT = 8404
PROMETHEUS_INNER_PORT = 9090
READY_TIMEOUT_S = 60.0
"""Maximum time for `up` to see every replica healthy and scraped, on top of the startup delay."""
STOP_TIMEOUT_S = 20.0


class SandboxConfig(BaseModel):
    """Settings of one sandbox. The name keeps several sandboxes on one machine apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    """Sandbox name: part of the namespace name and of the state folder."""
    replicas: int = Field(default=3, ge=1, le=50)
    startup_delay_s: float = Field(default=0.0, ge=0.0, le=600.0)
    """Seconds from the start of a replica process until it listens."""
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of /work requests to which every replica responds with HTTP 500."""
    lb_port: int = Field(default=18080, ge=1, le=65535)
    """Host port of the load balancer, on 127.0.0.1."""
    prometheus_port: int = Field(default=19090, ge=1, le=65535)
    """Host port through which Prometheus is reachable, on 127.0.0.1."""
    scrape_interval_s: int = Field(default=1, ge=1, le=60)
    check_interval_ms: int = Field(default=100, ge=10, le=5000)
    """HAProxy's active health-check interval."""
    check_fall: int = Field(default=2, ge=1, le=10)
    check_rise: int = Field(default=2, ge=1, le=10)

    @field_validator("prometheus_port")
    @classmethod
    def _ports_differ(cls, value: int, info: Any) -> int:
        if value == info.data.get("lb_port"):
            raise ValueError(f"prometheus_port {value} equals lb_port; choose two different ports")
        return value

    @property
    def netns(self) -> str:
        return f"stormgate-{self.name}"

    @property
    def detection_time_s(self) -> float:
        """Maximum time HAProxy needs to mark a restarted replica UP: `check_rise` checks, one interval each."""
        return self.check_rise * self.check_interval_ms / 1000.0


@dataclass(frozen=True)
class Replica:
    name: str
    address: str
    port: int


@dataclass(frozen=True)
class ServerState:
    """One HAProxy backend server as the runtime API reports it."""

    name: str
    status: str
    """HAProxy status: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up), MAINT, ..."""
    check_status: str
    """Result of the last health check, for example L7OK or L4CON."""
    down_transitions: int

    @property
    def healthy(self) -> bool:
        return self.status == "UP" and self.check_status.lstrip("* ") == "L7OK"


@dataclass(frozen=True)
class ProcessState:
    """One supervisord program."""

    name: str
    state: str
    """supervisord state name: RUNNING, STARTING, BACKOFF, EXITED, ..."""
    pid: int


def state_root() -> Path:
    return Path(os.environ.get("STORMGATE_STATE_DIR", Path(tempfile.gettempdir()) / "stormgate"))


def replicas_of(config: SandboxConfig) -> list[Replica]:
    # Every replica has its own loopback address inside the namespace, so an iptables rule can
    # single it out by address.
    return [Replica(f"replica-{index}", f"127.0.1.{index + 1}", REPLICA_PORT) for index in range(config.replicas)]


def find_binary(name: str, package: str) -> str:
    """Return the path of a system binary on PATH, or raise MissingDependency with the install command."""
    found = shutil.which(name)
    if found is None:
        raise MissingDependency(
            f"The sandbox needs the '{name}' binary, which was not found on PATH ({os.environ.get('PATH', '')}). "
            f"Install it with: apt-get install -y {package}"
        )
    return found


def supervisord_binary() -> str:
    beside_python = Path(sys.executable).parent / "supervisord"
    if beside_python.exists():
        return str(beside_python)
    return find_binary("supervisord", "supervisor")


def check_port_free(port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as HAProxy sets it: connections in TIME_WAIT do not block a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise PortInUse(
                f"Port 127.0.0.1:{port} ({setting}) is already in use ({error.strerror}). "
                f"Stop the program that holds it or choose another port with --{setting.replace('_', '-')} "
                f"(stormgate sandbox up) or --sandbox-{setting.replace('_', '-')} (stormgate run)."
            ) from error


class Sandbox:
    """One sandbox, identified by its name; `up` and `down` are idempotent."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.state_dir = state_root() / f"sandbox-{config.name}"
        self.replicas = replicas_of(config)

    # ----- discovery -----

    @classmethod
    def attach(cls, name: str = "default") -> Sandbox:
        """Return the running sandbox with this name, reading the settings it was started with."""
        state_file = state_root() / f"sandbox-{name}" / "state.json"
        if not state_file.exists():
            raise SandboxError(
                f"No sandbox named '{name}' is running. Start it with: stormgate sandbox up --name {name}"
            )
        return cls(SandboxConfig.model_validate_json(state_file.read_text()))

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.config.lb_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.config.prometheus_port}"

    def exists(self) -> bool:
        return self.state_dir.exists() or self._netns_exists()

    # ----- up -----

    def up(self) -> None:
        """Start every component and return once every replica is healthy and scraped."""
        if os.geteuid() != 0:
            raise SandboxError(
                "The sandbox needs root to create its network namespace (ip netns). "
                "Run as root, for example with sudo; a rootless sandbox is not supported yet."
            )
        binaries = {
            "ip": find_binary("ip", "iproute2"),
            "haproxy": find_binary("haproxy", "haproxy"),
            "prometheus": find_binary("prometheus", "prometheus"),
            "supervisord": supervisord_binary(),
        }
        if self.exists():
            logger.warning("Sandbox %s has leftovers of an earlier run; removing them first.", self.config.name)
            self.down()
        check_port_free(self.config.lb_port, "lb_port")
        check_port_free(self.config.prometheus_port, "prometheus_port")

        started = time.monotonic()
        try:
            self._write_files(binaries)
            self._run([binaries["ip"], "netns", "add", self.config.netns])
            self._run([binaries["ip"], "-n", self.config.netns, "link", "set", "lo", "up"])
            self._run([binaries["supervisord"], "-c", str(self.state_dir / "supervisord.conf")])
            self.wait_ready(timeout_s=READY_TIMEOUT_S + self.config.startup_delay_s)
        except BaseException:
            logger.error("Sandbox %s failed to start; stopping what was started.", self.config.name)
            self.down()
            raise
        logger.info(
            "Sandbox %s is up after %.1f s: load balancer %s, Prometheus %s.",
            self.config.name,
            time.monotonic() - started,
            self.lb_url,
            self.prometheus_url,
        )

    def _write_files(self, binaries: dict[str, str]) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "prometheus-data").mkdir(exist_ok=True)
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        )
        values = {
            **self.config.model_dump(),
            "netns": self.config.netns,
            "state_dir": str(self.state_dir),
            "source_root": str(SOURCE_ROOT),
            "python": sys.executable,
            "replicas": self.replicas,
            "exporter_port": EXPORTER_PORT,
            "prometheus_inner_port": PROMETHEUS_INNER_PORT,
            "scrape_timeout_ms": int(self.config.scrape_interval_s * 800),
            **binaries,
        }
        for template in ("haproxy.cfg", "prometheus.yml", "supervisord.conf"):
            rendered = environment.get_template(f"{template}.j2").render(values)
            (self.state_dir / template).write_text(rendered)
        (self.state_dir / "state.json").write_text(self.config.model_dump_json(indent=2))

    def wait_ready(self, *, timeout_s: float) -> None:
        """Wait until HAProxy reports every replica UP and Prometheus scrapes every target."""
        deadline = time.monotonic() + timeout_s
        last_problem = "nothing checked yet"
        while time.monotonic() < deadline:
            try:
                last_problem = self._readiness_problem()
            except (OSError, SandboxError, xmlrpc.client.Error) as error:
                last_problem = str(error)
            if not last_problem:
                return
            time.sleep(0.2)
        raise SandboxError(
            f"Sandbox {self.config.name} was not ready after {timeout_s:.0f} s: {last_problem}. "
            f"Logs are in {self.state_dir / 'logs'}."
        )

    def _readiness_problem(self) -> str:
        """Return why the sandbox is not ready yet, or an empty string when it is."""
        for process in self.processes():
            if process.state != "RUNNING":
                return f"process {process.name} is {process.state}"
        unhealthy = [server.name for server in self.servers() if not server.healthy]
        if unhealthy:
            return f"HAProxy reports {', '.join(unhealthy)} not UP"
        targets = self.query_prometheus("up")
        up_jobs = [sample["metric"].get("job") for sample in targets if sample["value"][1] == "1"]
        if up_jobs.count("replicas") < self.config.replicas or "haproxy" not in up_jobs:
            return f"Prometheus has scraped only {len(up_jobs)} of {self.config.replicas + 1} targets"
        return ""

    # ----- status -----

    def supervisor(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.state_dir / 'supervisor.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> list[ProcessState]:
        try:
            infos = self.supervisor().supervisor.getAllProcessInfo()
        except OSError as error:
            raise SandboxError(
                f"supervisord of sandbox {self.config.name} is not reachable at {self.state_dir / 'supervisor.sock'} "
                f"({error}). Restart the sandbox with: stormgate sandbox up --name {self.config.name}"
            ) from error
        return [ProcessState(info["name"], info["statename"], int(info["pid"])) for info in infos]

    def replica_pids(self) -> dict[str, int]:
        names = {replica.name for replica in self.replicas}
        return {process.name: process.pid for process in self.processes() if process.name in names}

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(2.0)
            connection.connect(str(self.state_dir / "haproxy.sock"))
            connection.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> list[ServerState]:
        """Return the state of every replica in HAProxy's backend."""
        text = self.haproxy_command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return [
            ServerState(row["svname"], row["status"], row["check_status"], int(row["chkdown"] or 0))
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
        ]

    def query_prometheus(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                payload = json.load(response)
        except (urllib.error.URLError, OSError) as error:
            raise SandboxError(f"Prometheus at {self.prometheus_url} did not respond: {error}") from error
        return list(payload["data"]["result"])

    def status(self) -> dict[str, Any]:
        """Return a summary of the processes and load-balancer backends, for humans."""
        return {
            "name": self.config.name,
            "load_balancer": self.lb_url,
            "prometheus": self.prometheus_url,
            "processes": {process.name: f"{process.state} pid {process.pid}" for process in self.processes()},
            "backends": {server.name: server.status for server in self.servers()},
        }

    # ----- down -----

    def down(self) -> None:
        """Stop every process, delete the namespace and the state folder. Safe to call twice."""
        socket_path = self.state_dir / "supervisor.sock"
        if socket_path.exists():
            try:
                self.supervisor().supervisor.shutdown()
            except (OSError, xmlrpc.client.Error) as error:
                logger.warning(
                    "supervisord of sandbox %s did not accept shutdown (%s); killing it.", self.config.name, error
                )
        self._wait_for_processes_to_end(timeout_s=STOP_TIMEOUT_S)
        self._kill_leftover_processes()
        if self._netns_exists():
            for pid in self._netns_pids():
                self._kill(pid)
            subprocess.run(["ip", "netns", "delete", self.config.netns], check=False, capture_output=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        logger.info("Sandbox %s is down.", self.config.name)

    def _own_processes(self) -> list[int]:
        """Return the pids of processes whose command line names this sandbox's state folder."""
        marker = str(self.state_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                command_line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in command_line:
                pids.append(int(entry.name))
        return pids

    def _wait_for_processes_to_end(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._own_processes() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _kill_leftover_processes(self) -> None:
        for pid in self._own_processes():
            logger.warning("Killing leftover process %d of sandbox %s.", pid, self.config.name)
            self._kill(pid)

    @staticmethod
    def _kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _netns_exists(self) -> bool:
        return Path("/run/netns", self.config.netns).exists()

    def _netns_pids(self) -> list[int]:
        result = subprocess.run(["ip", "netns", "pids", self.config.netns], capture_output=True, text=True, check=False)
        return [int(line) for line in result.stdout.split()]

    @staticmethod
    def _run(command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SandboxError(
                f"Command {' '.join(command)} failed with exit code {result.returncode}: {result.stderr.strip()}"
            )


def parse_config(**settings: Any) -> SandboxConfig:
    """Build a SandboxConfig, turning validation errors into a UsageError that names the setting."""
    from pydantic import ValidationError

    try:
        return SandboxConfig(**settings)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'config'}: {item['msg']} (got {item.get('input')!r})"
            for item in error.errors()
        )
        raise UsageError(f"Invalid sandbox setting: {problems}") from error
