"""Instance kill: send a signal to chosen instances and let the platform replace them."""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chaos.safety import DEFAULT_MAX_SHARE, check_share
from chaos.targets.base import Instance, Target
from stormgate.errors import FaultNotEffective

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0


class InstanceKillSpec(BaseModel):
    """Scenario settings of an instance kill."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["instance-kill"] = "instance-kill"
    count: int | None = Field(default=None, ge=1)
    """Number of instances to kill; give this or `share`, not both. Default: 1."""
    share: float | None = Field(default=None, gt=0.0, le=1.0)
    """Share of the running instances to kill, rounded down, at least one."""
    selection: Literal["random", "oldest"] = "random"
    signal: Literal["SIGKILL", "SIGTERM"] = "SIGKILL"
    max_share: float = Field(default=DEFAULT_MAX_SHARE, gt=0.0, le=1.0)
    allow_all: bool = False
    """Allow the fault to hit every instance; off so that a typo cannot take a service down."""


class InstanceKillPlan(BaseModel):
    """Exactly which instances the kill touches; printed as it is in a dry run."""

    fault_id: str
    kind: Literal["instance-kill"] = "instance-kill"
    target: str
    signal: str
    instances: list[Instance]
    seed: int
    """Seed of the random selection, recorded so that a run can be replayed."""


class InstanceKill:
    """Kill instances once; the platform is expected to replace them."""

    def __init__(self, spec: InstanceKillSpec) -> None:
        if spec.count is not None and spec.share is not None:
            raise ValueError("instance-kill takes either count or share, not both")
        self.spec = spec

    def plan(self, target: Target, *, fault_id: str, seed: int) -> InstanceKillPlan:
        protected = target.protected_instances()
        candidates = [instance for instance in target.instances() if instance.name not in protected]
        if self.spec.share is not None:
            wanted = max(1, math.floor(len(candidates) * self.spec.share))
        else:
            wanted = self.spec.count or 1
        check_share(
            requested=wanted,
            available=len(candidates),
            max_share=self.spec.max_share,
            allow_all=self.spec.allow_all,
            fault=f"instance-kill on {target.name}",
        )
        if self.spec.selection == "oldest":
            chosen = sorted(candidates, key=lambda instance: instance.started_at)[:wanted]
        else:
            chosen = random.Random(seed).sample(candidates, wanted)
        return InstanceKillPlan(
            fault_id=fault_id, target=target.name, signal=self.spec.signal, instances=chosen, seed=seed
        )

    def inject(self, target: Target, plan: InstanceKillPlan) -> None:
        sig = signal.Signals[plan.signal]
        for instance in plan.instances:
            target.kill(instance, sig)

    def verify(self, target: Target, plan: InstanceKillPlan) -> None:
        """Raise FaultNotEffective unless every killed process is gone within a few seconds."""
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        remaining = list(plan.instances)
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

    def revert(self, target: Target, plan: InstanceKillPlan) -> list[str]:
        """Start any killed instance that the platform has not restarted; return their names."""
        started = [instance.name for instance in plan.instances if target.ensure_running(instance.name)]
        if started:
            logger.warning(
                "Revert of %s started %s, which the platform had not restarted.", plan.fault_id, ", ".join(started)
            )
        return started
