"""Instance kill: send a signal to chosen instances, once or every `interval_s`, and let the platform replace them."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, SelectionSpec, VerifyResult, check_ids
from chaos.safety import (
    eligible_instances,
    select_instances,
    share_cap,
)
from chaos.targets.base import Instance, Target
from stormgate.errors import FaultNotEffective, StormgateError

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0
"""Time a killed process has to disappear before the kill counts as not effective."""
STOP_TIMEOUT_S = 10.0


class InstanceKillSpec(SelectionSpec):
    """Scenario settings of an instance kill."""

    kind: Literal["instance-kill"] = "instance-kill"
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"
    interval_s: float | None = Field(default=None, gt=0.0)
    """Seconds between rounds of a repeated kill; give it together with `duration_s`."""
    duration_s: float | None = Field(default=None, gt=0.0)
    """How long a repeated kill goes on; the first round is at the injection."""

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if (self.interval_s is None) != (self.duration_s is None):
            raise ValueError(
                "a repeated instance-kill needs both interval_s and duration_s "
                f"(got interval_s={self.interval_s}, duration_s={self.duration_s})"
            )
        return self


class KillRound(BaseModel):
    """One round of a kill: when, counted from the injection, and which instances by name."""

    at_s: float
    instances: list[str]


KillOutcome = Literal["killed", "not-running", "skipped-cap", "not-effective"]


class KillRecord(BaseModel):
    """One signal sent, as it happened."""

    round: int
    instance: str
    pid: int
    signal: str
    wall_time: float
    monotonic_time: float
    outcome: KillOutcome


class InstanceKillPlan(FaultPlan):
    """Exactly which instances each round kills; printed as it is in a dry run."""

    kind: Literal["instance-kill"] = "instance-kill"
    signal: str
    rounds: list[KillRound] = Field(default_factory=list)
    """Every round; the first one is `instances`. Later rounds assume killed instances came back."""
    total_instances: int = 0
    """Eligible instances at planning time, the base of the share cap in later rounds."""
    max_concurrent: int = 0
    """Largest number of instances that may be down at once; later rounds kill fewer to stay within it."""

    @property
    def restarts_instances(self) -> bool:
        return True

    def describe(self) -> str:
        lines = [super().describe() + f", {self.signal}"]
        for number, kill_round in enumerate(self.rounds[1:], start=2):
            lines.append(f"  round {number} at +{kill_round.at_s:g} s: {', '.join(kill_round.instances)}")
        return "\n".join(lines)


class InstanceKillResult(InjectResult):
    kills: list[KillRecord] = Field(default_factory=list)


class InstanceKill(Fault[InstanceKillPlan]):
    """Kill instances once or repeatedly; the platform is expected to replace them."""

    kind = "instance-kill"
    plan_model = InstanceKillPlan

    def __init__(self, spec: InstanceKillSpec) -> None:
        super().__init__()
        self.spec = spec
        self.kills: list[KillRecord] = []
        """Every signal sent by this fault object, first round included, in order."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> InstanceKillPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        candidates = eligible_instances(target)
        wanted = self.spec.checked_count(available=len(candidates), fault=f"instance-kill on {target.name}")
        chosen = select_instances(candidates, wanted, selection=self.spec.selection, seed=seed)
        return InstanceKillPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            instances=chosen,
            duration_s=self.spec.duration_s,
            signal=self.spec.signal,
            rounds=self._rounds(candidates, chosen, wanted, seed),
            total_instances=len(candidates),
            max_concurrent=share_cap(
                available=len(candidates), max_share=self.spec.max_share, allow_all=self.spec.allow_all
            ),
        )

    def _rounds(self, candidates: list[Instance], first: list[Instance], wanted: int, seed: int) -> list[KillRound]:
        rounds = [KillRound(at_s=0.0, instances=[instance.name for instance in first])]
        if self.spec.interval_s is None or self.spec.duration_s is None:
            return rounds
        # Oldest first: a killed instance comes back as the youngest, so the queue rotates.
        queue = [instance.name for instance in sorted(candidates, key=lambda instance: instance.started_at)]
        for name in rounds[0].instances:
            queue.remove(name)
            queue.append(name)
        names = sorted(instance.name for instance in candidates)
        number = 1
        while number * self.spec.interval_s < self.spec.duration_s:
            if self.spec.selection == "oldest":
                picked = queue[:wanted]
                queue = queue[wanted:] + picked
            else:
                # The seed plus the round number gives every round its own choice, the same on a replay.
                sample = [Instance(name=name) for name in names]
                picked = [
                    instance.name
                    for instance in select_instances(sample, wanted, selection="random", seed=seed + number)
                ]
            rounds.append(KillRound(at_s=number * self.spec.interval_s, instances=picked))
            number += 1
        return rounds

    def inject(self, target: Target, plan: InstanceKillPlan) -> InstanceKillResult:
        self.kills = []
        sig = signal.Signals[plan.signal]
        for instance in plan.instances:
            self._kill(target, plan, 0, instance, sig)
        if len(plan.rounds) > 1:
            started = time.monotonic()
            self._thread = self._start_background(plan.fault_id, lambda: self._repeat(target, plan, started))
        return InstanceKillResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            touched=[instance.name for instance in plan.instances],
            kills=list(self.kills),
        )

    def _kill(
        self, target: Target, plan: InstanceKillPlan, number: int, instance: Instance, sig: signal.Signals
    ) -> None:
        target.kill(instance, sig)
        record = KillRecord(
            round=number,
            instance=instance.name,
            pid=instance.pid,
            signal=sig.name,
            wall_time=time.time(),
            monotonic_time=time.monotonic(),
            outcome="killed",
        )
        with self._lock:
            self.kills.append(record)
        self._record("fault.kill", fault_id=plan.fault_id, round=number, instance=instance.name, pid=instance.pid)

    def _repeat(self, target: Target, plan: InstanceKillPlan, started_monotonic: float) -> None:
        """Run rounds 2 and later until the duration ends or revert sets the stop event."""
        sig = signal.Signals[plan.signal]
        for number, kill_round in enumerate(plan.rounds[1:], start=1):
            if self._stop.wait(max(0.0, started_monotonic + kill_round.at_s - time.monotonic())):
                return
            running = {instance.name: instance for instance in eligible_instances(target)}
            # Instances still down from an earlier round count against the cap.
            budget = plan.max_concurrent - max(0, plan.total_instances - len(running))
            for name in kill_round.instances:
                instance = running.get(name)
                if instance is None or budget <= 0:
                    outcome: KillOutcome = "not-running" if instance is None else "skipped-cap"
                    logger.warning(
                        "Run %s: round %d of %s skips %s (%s).", plan.run_id, number + 1, plan.fault_id, name, outcome
                    )
                    self._note(number, name, 0, plan.signal, outcome)
                    continue
                budget -= 1
                self._kill(target, plan, number, instance, sig)
                try:
                    self._wait_gone(target, plan, [instance])
                except FaultNotEffective:
                    self._note(number, name, instance.pid, plan.signal, "not-effective")
                    raise
        if self._stop.wait(max(0.0, started_monotonic + (plan.duration_s or 0.0) - time.monotonic())):
            return
        self._record("fault.expire", fault_id=plan.fault_id)

    def _note(self, number: int, name: str, pid: int, signal_name: str, outcome: KillOutcome) -> None:
        record = KillRecord(
            round=number,
            instance=name,
            pid=pid,
            signal=signal_name,
            wall_time=time.time(),
            monotonic_time=time.monotonic(),
            outcome=outcome,
        )
        with self._lock:
            self.kills.append(record)

    def verify(self, target: Target, plan: InstanceKillPlan) -> VerifyResult:
        """Raise FaultNotEffective unless every process of the first round is gone within a few seconds.

        Later rounds of a repeated kill are verified as they happen; `wait` raises their failures.
        """
        self._wait_gone(target, plan, plan.instances)
        return VerifyResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            evidence=[f"{instance.name} (pid {instance.pid}) no longer runs" for instance in plan.instances],
        )

    @staticmethod
    def _wait_gone(target: Target, plan: InstanceKillPlan, instances: list[Instance]) -> None:
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        remaining = list(instances)
        while remaining and time.monotonic() < deadline:
            remaining = [instance for instance in remaining if not target.instance_gone(instance)]
            if remaining:
                time.sleep(0.05)
        if remaining:
            names = ", ".join(f"{instance.name} (pid {instance.pid})" for instance in remaining)
            raise FaultNotEffective(
                f"{plan.signal} was sent but {names} still ran {VERIFY_TIMEOUT_S:.0f} s later on {target.name}; "
                "the process ignores the signal or the kill did not reach it"
            )

    def revert(self, target: Target, plan: InstanceKillPlan) -> RevertResult:
        """Stop further rounds and start any killed instance that the platform has not restarted."""
        self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        names = sorted({name for kill_round in plan.rounds for name in kill_round.instances})
        names = names or [instance.name for instance in plan.instances]
        started = []
        for name in names:
            try:
                if target.ensure_running(name):
                    started.append(name)
            except StormgateError as error:
                logger.error("Run %s: revert of %s could not check %s: %s", plan.run_id, plan.fault_id, name, error)
                raise
        if started:
            logger.warning(
                "Run %s: revert of %s started %s, which the platform had not restarted.",
                plan.run_id,
                plan.fault_id,
                ", ".join(started),
            )
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=[f"started {name}" for name in started])
