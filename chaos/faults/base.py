"""The interface of every fault kind: plan, inject, verify, revert, and the lifetime of its effect.

A fault object carries one injection at a time. `plan` has no side effects, so a dry run can
print it. `revert` works from the plan alone, so a later process (cleanup after a crash) can
undo an injection made by another one. A fault whose effect lasts (a repeated kill, a
partition, a flood) keeps it until its `duration_s` ends or `revert` is called. The
`active` property and `wait` report whether the effect still lasts.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chaos.safety import DEFAULT_MAX_SHARE, check_share, requested_count
from chaos.targets.base import Instance, Target
from reports.timeline import Timeline
from stormgate.errors import StormgateError, UsageError

logger = logging.getLogger(__name__)

FAULT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
"""Fault and run ids end up in iptables comments and file names, so they stay within this set."""


class SelectionSpec(BaseModel):
    """Settings shared by faults that pick instances: how many, which ones, and the cap."""

    model_config = ConfigDict(extra="forbid")

    count: int | None = Field(default=None, ge=1)
    """Number of instances to act on (in each round of a repeated fault); give this or `share`. Default: 1."""
    share: float | None = Field(default=None, gt=0.0, le=1.0)
    """Share of the running instances to act on, rounded down, at least one."""
    selection: Literal["random", "oldest"] = "random"
    """"random" draws with the run's seed; "oldest" takes the instances that started first."""
    max_share: float = Field(default=DEFAULT_MAX_SHARE, gt=0.0, le=1.0)
    """Share of the instances that may be hit at the same time because of this fault."""
    allow_all: bool = False
    """Allow the fault to hit every instance; off so that a typo cannot take a service down."""

    @model_validator(mode="after")
    def _check_count_or_share(self) -> Self:
        if self.count is not None and self.share is not None:
            kind = getattr(self, "kind", "the fault")
            raise ValueError(f"{kind} takes count ({self.count}) or share ({self.share}), not both")
        return self

    def checked_count(self, *, available: int, fault: str) -> int:
        """Return how many of `available` instances to act on; raise SafetyViolation above the cap."""
        requested = requested_count(count=self.count, share=self.share, available=available)
        check_share(
            requested=requested,
            available=available,
            max_share=self.max_share,
            allow_all=self.allow_all,
            fault=fault,
        )
        return requested


class FaultRevertFailed(StormgateError, RuntimeError):
    """A fault could not be reverted; what it touched may still be in effect."""


class FaultPlan(BaseModel):
    """Exactly what an injection touches; computed without side effects and printed in a dry run."""

    fault_id: str
    kind: str
    run_id: str = ""
    target: str
    seed: int
    """Seed of every random choice in the plan, recorded so that a run can be replayed."""
    instances: list[Instance] = Field(default_factory=list)
    """Instances the fault acts on directly (empty for a flood, which acts on the load balancer)."""
    duration_s: float | None = None
    """How long the effect lasts after the injection; None for a one-off action or until revert."""

    @property
    def restarts_instances(self) -> bool:
        """Whether the platform is expected to replace the touched instances (true for kills)."""
        return False

    def describe(self) -> str:
        """Return the plan as lines for a human, as a dry run prints it."""
        names = ", ".join(instance.name for instance in self.instances) or "no instance"
        lasting = f" for {self.duration_s:g} s" if self.duration_s is not None else ""
        return f"{self.kind} {self.fault_id} on {self.target} (seed {self.seed}){lasting}: {names}"


class FaultResult(BaseModel):
    """Common fields of what inject, verify and revert return."""

    fault_id: str
    kind: str
    wall_time: float = Field(default_factory=time.time)
    """Seconds since the Unix epoch (UTC) at which the step finished."""
    monotonic_time: float = Field(default_factory=time.monotonic)


class InjectResult(FaultResult):
    touched: list[str] = Field(default_factory=list)
    """Changes made by the injection: instance names, iptables rules or flood engines."""


class VerifyResult(FaultResult):
    evidence: list[str] = Field(default_factory=list)
    """Observations that show the fault took effect, such as "replica-1 DOWN in HAProxy"."""


class RevertResult(FaultResult):
    undone: list[str] = Field(default_factory=list)
    """Changes undone by this revert. It is empty when nothing was left to undo, because revert is idempotent."""


PlanT = TypeVar("PlanT", bound=FaultPlan)


class Fault(ABC, Generic[PlanT]):
    """One fault kind. Subclasses implement the four steps and, for lasting effects, the background work."""

    kind: ClassVar[str]
    plan_model: ClassVar[type[FaultPlan]]
    """Model that `revert` needs to rebuild a plan from the ledger's JSON."""

    def __init__(self) -> None:
        self.timeline: Timeline | None = None
        """Timeline that background events (each round of a repeated kill, expiry) are added to."""
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._ended.set()
        self._background_error: StormgateError | None = None

    @abstractmethod
    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> PlanT:
        """Compute what the fault would touch; touch nothing."""

    @abstractmethod
    def inject(self, target: Target, plan: PlanT) -> InjectResult: ...

    @abstractmethod
    def verify(self, target: Target, plan: PlanT) -> VerifyResult:
        """Raise FaultNotEffective when the fault did not take effect."""

    @abstractmethod
    def revert(self, target: Target, plan: PlanT) -> RevertResult:
        """Undo the injection; safe to call again, from any process, with the plan alone."""

    def revert_json(self, target: Target, plan: dict[str, Any]) -> RevertResult:
        """Revert from a plan stored as JSON, the form in which the ledger stores it."""
        return self.revert(target, self.plan_model.model_validate(plan))  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        """Whether the fault's effect still lasts: its duration has not ended and it was not reverted."""
        return not self._ended.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; return True once the effect has ended.

        Raises the FaultNotEffective (or other StormgateError) of background work, such as a
        later round of a repeated kill that did not take effect, as soon as it happened.
        """
        ended = self._ended.wait(timeout_s)
        if self._background_error is not None:
            raise self._background_error
        return ended

    # ----- helpers for subclasses -----

    def _record(self, kind: str, **details: Any) -> None:
        if self.timeline is not None:
            self.timeline.add(kind, **details)

    def _start_background(self, name: str, work: Any) -> threading.Thread:
        """Run `work()` in a daemon thread; the effect counts as active until it returns."""
        self._stop.clear()
        self._ended.clear()
        self._background_error = None

        def run() -> None:
            try:
                work()
            except StormgateError as error:
                logger.error("Background work of fault %s failed: %s", name, error)
                self._background_error = error
            finally:
                self._ended.set()

        thread = threading.Thread(target=run, name=f"fault-{name}", daemon=True)
        thread.start()
        return thread

    def _stop_background(self, thread: threading.Thread | None, *, timeout_s: float) -> None:
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.error("Background thread %s did not stop within %.0f s.", thread.name, timeout_s)


def check_ids(*, fault_id: str, run_id: str) -> None:
    """Raise UsageError unless both ids fit in iptables comments and file names."""
    for label, value in (("fault id", fault_id), ("run id", run_id)):
        if value and not FAULT_ID_PATTERN.match(value):
            raise UsageError(
                f"The {label} {value!r} is invalid: use up to 128 letters, digits, '.', '_', '/' or '-', "
                "starting with a letter or digit"
            )
