"""Pod kill: delete a workload's pods by label selector, once or every `interval_s`; the controller replaces them.

A kill is verified when each deleted pod's uid has disappeared from the watch: the pod is gone,
or a StatefulSet replaced it under the same name with a new uid. With a grace period, a pod
stays (terminating) until it ends, so verification allows the grace period on top of its timeout.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, SelectionSpec, VerifyResult, check_ids
from chaos.safety import share_cap
from chaos.targets.base import Target
from chaos.targets.kube_watch import Observation
from chaos.targets.kubernetes import KubernetesTarget, PodInstance
from stormgate.errors import FaultNotEffective, UsageError

logger = logging.getLogger(__name__)

DELETE_CONCURRENCY = 16
"""Delete requests in flight at once, so that a round of many pods hits them within a short window."""
VERIFY_TIMEOUT_S = 30.0
"""Time a deleted pod has, beyond its grace period, to disappear before the kill counts as not effective."""
STOP_TIMEOUT_S = 10.0


class PodKillSpec(SelectionSpec):
    """Scenario settings of a pod kill."""

    kind: Literal["pod-kill"] = "pod-kill"
    grace_period_s: int = Field(default=0, ge=0)
    """Grace period of the delete; 0 removes the pod at once, as a crash of its node would."""
    interval_s: float | None = Field(default=None, gt=0.0)
    """Seconds between rounds of a repeated kill; give it together with `duration_s`."""
    duration_s: float | None = Field(default=None, gt=0.0)
    verify_timeout_s: float = Field(default=VERIFY_TIMEOUT_S, gt=0.0)

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if (self.interval_s is None) != (self.duration_s is None):
            raise ValueError(
                "a repeated pod-kill needs both interval_s and duration_s "
                f"(got interval_s={self.interval_s}, duration_s={self.duration_s})"
            )
        return self


class PodRef(BaseModel):
    name: str
    uid: str


class PodKillRecord(BaseModel):
    """One delete request, as it happened."""

    round: int
    pod: str
    uid: str
    wall_time: float
    """UTC epoch seconds, to the millisecond, just before the delete request was sent."""
    monotonic_time: float
    outcome: Literal["deleted", "already-gone", "skipped-cap"]


class PodKillPlan(FaultPlan):
    """The pods of the first round by name and uid; later rounds draw from the pods running at their time."""

    kind: Literal["pod-kill"] = "pod-kill"
    namespace: str
    selector: str
    grace_period_s: int
    selection: Literal["random", "oldest"]
    pods: list[PodRef]
    per_round: int
    interval_s: float | None = None
    total_pods: int
    max_concurrent: int

    @property
    def restarts_instances(self) -> bool:
        return True

    def describe(self) -> str:
        names = ", ".join(pod.name for pod in self.pods)
        text = (
            f"pod-kill {self.fault_id} on {self.target} (seed {self.seed}): delete {names} "
            f"({self.selector}) with a grace period of {self.grace_period_s} s"
        )
        if self.interval_s is not None and self.duration_s is not None:
            text += (
                f"; then {self.per_round} {self.selection} pod(s) every {self.interval_s:g} s for "
                f"{self.duration_s:g} s, at most {self.max_concurrent} down at once"
            )
        return text


class PodKillResult(InjectResult):
    kills: list[PodKillRecord] = Field(default_factory=list)
    started: float
    """UTC epoch seconds of the first delete request; recovery clocks start here."""


def kubernetes_target(target: Target, kind: str) -> KubernetesTarget:
    if not isinstance(target, KubernetesTarget):
        raise UsageError(f"Fault kind {kind} acts on Kubernetes targets only, not on {target.name}")
    return target


def _pick(candidates: list[PodInstance], wanted: int, *, selection: str, seed: int) -> list[PodInstance]:
    ordered = sorted(candidates, key=lambda pod: pod.name)
    if selection == "oldest":
        # The API stores creationTimestamp to the second; the name breaks ties the same way on a replay.
        return sorted(ordered, key=lambda pod: pod.started_at)[:wanted]
    return random.Random(seed).sample(ordered, wanted)


class PodKill(Fault[PodKillPlan]):
    """Delete pods once or repeatedly; the workload's controller is expected to replace them."""

    kind = "pod-kill"
    plan_model = PodKillPlan

    def __init__(self, spec: PodKillSpec) -> None:
        super().__init__()
        self.spec = spec
        self.kills: list[PodKillRecord] = []
        """Every delete of this fault object, in order, later rounds included."""
        self.started: Observation | None = None
        """When the first delete request was sent."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _candidates(self, target: KubernetesTarget) -> list[PodInstance]:
        protected = target.protected_instances()
        return [
            instance
            for instance in target.instances()
            if isinstance(instance, PodInstance) and instance.name not in protected
        ]

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> PodKillPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        kube = kubernetes_target(target, self.kind)
        candidates = self._candidates(kube)
        wanted = self.spec.checked_count(available=len(candidates), fault=f"pod-kill on {target.name}")
        chosen = _pick(candidates, wanted, selection=self.spec.selection, seed=seed)
        return PodKillPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            instances=list(chosen),
            duration_s=self.spec.duration_s,
            namespace=kube.namespace,
            selector=kube.selector,
            grace_period_s=self.spec.grace_period_s,
            selection=self.spec.selection,
            pods=[PodRef(name=pod.name, uid=pod.uid) for pod in chosen],
            per_round=wanted,
            interval_s=self.spec.interval_s,
            total_pods=len(candidates),
            max_concurrent=share_cap(
                available=len(candidates), max_share=self.spec.max_share, allow_all=self.spec.allow_all
            ),
        )

    def inject(self, target: Target, plan: PodKillPlan) -> PodKillResult:
        kube = kubernetes_target(target, self.kind)
        self.kills = []
        self.started = Observation.now()
        self._delete_all(kube, plan, 0, plan.pods)
        if plan.interval_s is not None and plan.duration_s is not None:
            started = self.started.monotonic
            self._thread = self._start_background(plan.fault_id, lambda: self._repeat(kube, plan, started))
        return PodKillResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            touched=[f"pod {plan.namespace}/{pod.name}" for pod in plan.pods],
            kills=list(self.kills),
            started=self.started.wall,
        )

    def _delete_all(self, target: KubernetesTarget, plan: PodKillPlan, number: int, pods: list[PodRef]) -> None:
        if len(pods) <= 1:
            for pod in pods:
                self._delete(target, plan, number, pod)
            return
        with ThreadPoolExecutor(max_workers=min(DELETE_CONCURRENCY, len(pods))) as pool:
            # list() re-raises the first failed delete here, after every request has ended.
            list(pool.map(lambda pod: self._delete(target, plan, number, pod), pods))

    def _delete(self, target: KubernetesTarget, plan: PodKillPlan, number: int, pod: PodRef) -> bool:
        observed = Observation.now()
        deleted = target.delete_pod(pod.name, uid=pod.uid, grace_period_s=plan.grace_period_s, run_id=plan.run_id)
        self._note(number, pod, observed, "deleted" if deleted else "already-gone")
        self._record("fault.kill", fault_id=plan.fault_id, round=number, instance=pod.name, uid=pod.uid)
        return deleted

    def _note(self, number: int, pod: PodRef, observed: Observation, outcome: str) -> None:
        record = PodKillRecord.model_validate(
            {
                "round": number,
                "pod": pod.name,
                "uid": pod.uid,
                "wall_time": observed.wall,
                "monotonic_time": observed.monotonic,
                "outcome": outcome,
            }
        )
        with self._lock:
            self.kills.append(record)

    def _repeat(self, target: KubernetesTarget, plan: PodKillPlan, started_monotonic: float) -> None:
        """Run rounds 2 and later until the duration ends or revert sets the stop event."""
        assert plan.interval_s is not None and plan.duration_s is not None
        number = 1
        while number * plan.interval_s < plan.duration_s:
            if self._stop.wait(max(0.0, started_monotonic + number * plan.interval_s - time.monotonic())):
                return
            candidates = self._candidates(target)
            ready = [pod for pod in candidates if pod.ready]
            # Pods still missing from earlier rounds count against the cap.
            budget = plan.max_concurrent - max(0, plan.total_pods - len(ready))
            wanted = min(plan.per_round, max(budget, 0), len(ready))
            if wanted < plan.per_round:
                logger.warning(
                    "Run %s: round %d of %s deletes %d of %d pods, because %d are still not ready.",
                    plan.run_id,
                    number + 1,
                    plan.fault_id,
                    wanted,
                    plan.per_round,
                    plan.total_pods - len(ready),
                )
            # The seed plus the round number gives every round its own draw, the same on a replay.
            chosen = _pick(ready, wanted, selection=plan.selection, seed=plan.seed + number) if wanted else []
            refs = [PodRef(name=pod.name, uid=pod.uid) for pod in chosen]
            self._delete_all(target, plan, number, refs)
            self._wait_gone(target, plan, refs)
            number += 1
        if self._stop.wait(max(0.0, started_monotonic + plan.duration_s - time.monotonic())):
            return
        self._record("fault.expire", fault_id=plan.fault_id)

    def _wait_gone(self, target: KubernetesTarget, plan: PodKillPlan, pods: list[PodRef]) -> None:
        timeout_s = plan.grace_period_s + self.spec.verify_timeout_s
        uids = {pod.uid for pod in pods}
        if not target.wait_gone(uids, timeout_s):
            left = [state.name for state in target.pod_states() if state.uid in uids]
            raise FaultNotEffective(
                f"Pods {', '.join(left)} in {plan.namespace} were deleted but still existed {timeout_s:.0f} s later "
                f"(grace period {plan.grace_period_s} s); check for finalizers on them or a stuck node"
            )

    def verify(self, target: Target, plan: PodKillPlan) -> VerifyResult:
        """Raise FaultNotEffective unless every pod of the first round disappeared or was replaced (new uid)."""
        kube = kubernetes_target(target, self.kind)
        self._wait_gone(kube, plan, plan.pods)
        by_name = {state.name: state.uid for state in kube.pod_states()}
        evidence = []
        for pod in plan.pods:
            replacement = by_name.get(pod.name)
            if replacement:
                evidence.append(f"pod {pod.name} replaced: uid {pod.uid} became {replacement}")
            else:
                evidence.append(f"pod {pod.name} (uid {pod.uid}) is gone")
        return VerifyResult(fault_id=plan.fault_id, kind=plan.kind, evidence=evidence)

    def revert(self, target: Target, plan: PodKillPlan) -> RevertResult:
        """Stop further rounds; deleted pods are the controller's to replace, so nothing else is undone."""
        self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=[])
