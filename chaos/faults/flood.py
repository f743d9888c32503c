"""Traffic flood: drive the load balancer far above the normal load through the load layer's flood engine.

The flood is effective when the engine achieved at least the required request rate: an
absolute `min_rps`, or `min_baseline_multiple` times the baseline rate the caller measured.
Because the achieved rate is known only at the end, `verify` checks right after the start
that the engine runs, and `wait` raises FaultNotEffective when the flood ended below the rate.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, VerifyResult, check_ids
from chaos.targets.base import Target
from loadtests.flood import Flood, FloodSpec
from loadtests.runner import require_loopback
from sandbox.environment import state_root
from stormgate.errors import FaultNotEffective, UsageError

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
"""Time the flood engine has to report that it runs."""
STOP_TIMEOUT_S = 15.0
TERMINATE_GRACE_S = 5.0


class TrafficFloodSpec(BaseModel):
    """Scenario settings of a traffic flood."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["flood"] = "flood"
    duration_s: float = Field(default=10.0, gt=0.0)
    connections: int = Field(default=100, ge=1)
    threads: int = Field(default=2, ge=1)
    engine: Literal["auto", "wrk", "locust"] = "auto"
    """Flood engine of `loadtests.flood`; "auto" takes wrk when it is installed and Locust otherwise."""
    path: str = Field(default="/work", pattern=r"^/")
    min_rps: float | None = Field(default=None, gt=0.0)
    """Request rate the flood must achieve to count as effective."""
    min_baseline_multiple: float | None = Field(default=None, gt=0.0)
    """Required rate as a multiple of the baseline rate, which the caller passes as `baseline_rps`."""

    @model_validator(mode="after")
    def _check_threshold(self) -> Self:
        if self.min_rps is None and self.min_baseline_multiple is None:
            raise ValueError(
                "a flood needs min_rps or min_baseline_multiple, so that its verification can tell it took effect"
            )
        return self


class TrafficFloodPlan(FaultPlan):
    """The flood's target URL, engine settings and the rate it must reach."""

    kind: Literal["flood"] = "flood"
    url: str
    path: str
    engine: Literal["auto", "wrk", "locust"]
    connections: int
    threads: int
    required_rps: float
    workdir: str
    """Folder of the engine's files; its processes are found by it when a cleanup has to stop them."""

    def describe(self) -> str:
        return (
            f"{super().describe()}: {self.engine} with {self.connections} connections on {self.threads} threads "
            f"against {self.url}{self.path}, at least {self.required_rps:g} requests/s"
        )


class FloodOutcome(BaseModel):
    """Result of the flood engine together with the rate it had to reach."""

    engine: str
    requests: int
    errors: int
    achieved_rps: float
    duration_s: float
    required_rps: float

    @property
    def effective(self) -> bool:
        return self.achieved_rps >= self.required_rps


class TrafficFlood(Fault[TrafficFloodPlan]):
    """Run one flood for `duration_s` and check the rate it reached."""

    kind = "flood"
    plan_model = TrafficFloodPlan

    def __init__(
        self, spec: TrafficFloodSpec, *, baseline_rps: float | None = None, workdir_root: Path | None = None
    ) -> None:
        super().__init__()
        self.spec = spec
        self.baseline_rps = baseline_rps
        """Request rate of the baseline phase, needed when the spec gives `min_baseline_multiple`."""
        self.workdir_root = workdir_root
        self.outcome: FloodOutcome | None = None
        """The engine's result once the flood ended; None before."""
        self._flood: Flood | None = None
        self._thread: threading.Thread | None = None

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> TrafficFloodPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        required = self.spec.min_rps or 0.0
        if self.spec.min_baseline_multiple is not None:
            if self.baseline_rps is None or self.baseline_rps <= 0:
                raise UsageError(
                    f"Flood {fault_id} needs {self.spec.min_baseline_multiple:g} times the baseline rate, but the "
                    f"baseline rate is {self.baseline_rps}; pass baseline_rps or give min_rps instead"
                )
            required = max(required, self.spec.min_baseline_multiple * self.baseline_rps)
        if target.name.startswith("sandbox/"):
            require_loopback(target.load_url)
        root = self.workdir_root or state_root() / "floods"
        return TrafficFloodPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            duration_s=self.spec.duration_s,
            url=target.load_url,
            path=self.spec.path,
            engine=self.spec.engine,
            connections=self.spec.connections,
            threads=self.spec.threads,
            required_rps=required,
            workdir=str(root / fault_id.replace("/", "_")),
        )

    def inject(self, target: Target, plan: TrafficFloodPlan) -> InjectResult:
        spec = FloodSpec(
            duration_s=plan.duration_s or self.spec.duration_s,
            connections=plan.connections,
            threads=plan.threads,
            engine=plan.engine,
            path=plan.path,
        )
        # A cluster target lists the host of its --load-url here; the sandbox lists none.
        allowed_hosts = tuple(getattr(target, "allowed_load_hosts", ()))
        flood = Flood(plan.url, spec, workdir=Path(plan.workdir), run_id=plan.run_id, allowed_hosts=allowed_hosts)
        self._flood = flood
        self.outcome = None
        flood.start()
        logger.info("Run %s: flood %s started: %s", plan.run_id, plan.fault_id, plan.describe())
        self._thread = self._start_background(plan.fault_id, lambda: self._watch(flood, plan))
        return InjectResult(fault_id=plan.fault_id, kind=plan.kind, touched=[f"{plan.engine} against {plan.url}"])

    def _watch(self, flood: Flood, plan: TrafficFloodPlan) -> None:
        flood.wait()
        outcome = self._outcome(flood, plan)
        self._record("fault.expire", fault_id=plan.fault_id, achieved_rps=outcome.achieved_rps)
        if self._stop.is_set():
            # Stopped early by revert: the rate of a cut-short flood does not show what the engine can reach.
            return
        self._check_rate(outcome, plan)

    def _outcome(self, flood: Flood, plan: TrafficFloodPlan) -> FloodOutcome:
        result = flood.result()
        self.outcome = FloodOutcome(
            engine=result.engine,
            requests=result.requests,
            errors=result.errors,
            achieved_rps=result.achieved_rps,
            duration_s=result.duration_s,
            required_rps=plan.required_rps,
        )
        return self.outcome

    @staticmethod
    def _check_rate(outcome: FloodOutcome, plan: TrafficFloodPlan) -> None:
        if not outcome.effective:
            raise FaultNotEffective(
                f"Flood {plan.fault_id} reached {outcome.achieved_rps:.0f} requests/s ({outcome.requests} requests, "
                f"{outcome.errors} errors in {outcome.duration_s:.1f} s), below the required "
                f"{plan.required_rps:.0f}/s; add connections or threads, or lower the requirement"
            )

    def verify(self, target: Target, plan: TrafficFloodPlan) -> VerifyResult:
        """Raise FaultNotEffective unless the engine runs; the rate is checked when it ends (see `wait`)."""
        flood = self._flood
        if flood is None:
            raise FaultNotEffective(f"Flood {plan.fault_id} was never started in this process; inject it first")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not flood.running and self.active and time.monotonic() < deadline:
            time.sleep(0.05)
        if flood.running:
            return VerifyResult(fault_id=plan.fault_id, kind=plan.kind, evidence=[f"{plan.engine} is running"])
        if not self.active:
            # A short flood can end before this check; then its result is the evidence.
            self.wait(0.0)
            if self.outcome is not None:
                return VerifyResult(
                    fault_id=plan.fault_id,
                    kind=plan.kind,
                    evidence=[f"{plan.engine} reached {self.outcome.achieved_rps:.0f} requests/s"],
                )
        raise FaultNotEffective(
            f"Flood engine {plan.engine} of {plan.fault_id} did not run within {START_TIMEOUT_S:.0f} s; "
            f"see its files in {plan.workdir}"
        )

    def revert(self, target: Target, plan: TrafficFloodPlan) -> RevertResult:
        """Stop the flood; from another process, stop every process that runs with the flood's folder."""
        self._stop.set()
        undone: list[str] = []
        if self._flood is not None:
            if self._flood.running:
                self._flood.stop()
                undone.append(f"stopped {plan.engine}")
            self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        else:
            undone += [f"stopped pid {pid}" for pid in _stop_processes_in(Path(plan.workdir))]
        if undone:
            logger.info("Run %s: reverted flood %s: %s.", plan.run_id, plan.fault_id, ", ".join(undone))
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=undone)


def _processes_in(folder: Path) -> list[int]:
    """Return pids of processes whose command line names the folder or whose working directory is in it."""
    # NOTE: wrk's command line names the folder (its Lua script lives there), but the Locust
    # engine's does not, so a Locust flood left by a killed harness runs until its --run-time ends.
    marker = str(folder)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if marker in command_line or cwd == marker or cwd.startswith(marker + "/"):
            pids.append(int(entry.name))
    return pids


def _stop_processes_in(folder: Path) -> list[int]:
    """Send SIGTERM, then SIGKILL after a grace period, to the processes of a flood left by another run."""
    pids = _processes_in(folder)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + TERMINATE_GRACE_S
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
