"""Node cordon and drain: mark a node unschedulable and evict the workload's pods on it through the Eviction API.

Off unless the target sets `allow_node_faults`, because a cordon affects every workload that
could be scheduled on the node. Only the target namespace's pods are evicted (pods of other
namespaces are outside the allowlist and stay), and the harness's own pods never are. The
Eviction API honours PodDisruptionBudgets: an eviction the budget rejects (HTTP 429) is
recorded, not forced.

The cordon is marked with the annotation `stormgate/cordoned-by: <run id>`. Revert uncordons
only a node with that mark, so it never undoes a cordon that an operator made.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, VerifyResult, check_ids
from chaos.faults.pod_kill import PodRef, kubernetes_target
from chaos.targets.base import Target
from chaos.targets.kube_cleanup import uncordon
from chaos.targets.kube_client import api_error, read_json
from chaos.targets.kube_safety import CORDONED_BY_ANNOTATION
from chaos.targets.kubernetes import KubernetesTarget
from stormgate.errors import FaultNotEffective, SafetyViolation

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class NodeDrainSpec(BaseModel):
    """Scenario settings of a node drain."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["node-drain"] = "node-drain"
    node: str = ""
    """Node to drain; empty picks, with the seed, one node that runs pods of the workload."""
    evict: bool = True
    """Evict the workload's pods on the node; False only cordons."""
    grace_period_s: int | None = Field(default=None, ge=0)
    """Grace period of the evictions; None keeps each pod's own."""
    duration_s: float | None = Field(default=None, gt=0.0)
    """How long the node stays cordoned; None until revert."""


class NodeDrainPlan(FaultPlan):
    kind: Literal["node-drain"] = "node-drain"
    node: str
    namespace: str
    pods: list[PodRef] = Field(default_factory=list)
    """Pods to evict, by name and uid."""
    grace_period_s: int | None = None

    def describe(self) -> str:
        names = ", ".join(pod.name for pod in self.pods) or "no pod"
        return (
            f"node-drain {self.fault_id} on {self.target} (seed {self.seed}): cordon node {self.node}, "
            f"evict {names} from {self.namespace}"
        )


class NodeDrainResult(InjectResult):
    evicted: list[str] = Field(default_factory=list)
    blocked: list[str] = Field(default_factory=list)
    """Pods whose eviction a PodDisruptionBudget rejected (HTTP 429)."""


class NodeDrain(Fault[NodeDrainPlan]):
    """Cordon one node and evict the workload's pods on it; uncordon on revert."""

    kind = "node-drain"
    plan_model = NodeDrainPlan

    def __init__(self, spec: NodeDrainSpec) -> None:
        super().__init__()
        self.spec = spec
        self._thread: threading.Thread | None = None

    @staticmethod
    def _allowed(target: Target) -> KubernetesTarget:
        kube = kubernetes_target(target, "node-drain")
        if not kube.allow_node_faults:
            raise SafetyViolation(
                f"Node faults are off on {kube.name}: a cordon affects every workload on the node; "
                "set allow_node_faults (--kube-allow-node-faults) to permit them"
            )
        return kube

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> NodeDrainPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        kube = self._allowed(target)
        states = [state for state in kube.pod_states() if not state.terminating]
        node = self.spec.node
        if not node:
            nodes = sorted({state.node for state in states if state.node})
            if not nodes:
                raise SafetyViolation(f"Node drain {fault_id} found no node that runs pods of {kube.selector}")
            node = random.Random(seed).choice(nodes)
        on_node = [state for state in states if state.node == node]
        if len(on_node) == len(states) and states:
            raise SafetyViolation(
                f"Node drain {fault_id} would evict all {len(states)} pods of {kube.selector}, because they all run "
                f"on {node}; spread the workload over more nodes first"
            )
        pods = [PodRef(name=state.name, uid=state.uid) for state in on_node] if self.spec.evict else []
        return NodeDrainPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            duration_s=self.spec.duration_s,
            node=node,
            namespace=kube.namespace,
            pods=pods,
            grace_period_s=self.spec.grace_period_s,
        )

    def inject(self, target: Target, plan: NodeDrainPlan) -> NodeDrainResult:
        kube = self._allowed(target)
        self._cordon(kube, plan)
        evicted, blocked = [], []
        for pod in plan.pods:
            if self._evict(kube, plan, pod):
                evicted.append(pod.name)
            else:
                blocked.append(pod.name)
        if plan.duration_s is not None:
            duration_s = plan.duration_s
            self._thread = self._start_background(plan.fault_id, lambda: self._expire(kube, plan, duration_s))
        return NodeDrainResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            touched=[f"cordoned node {plan.node}", *(f"evicted pod {plan.namespace}/{name}" for name in evicted)],
            evicted=evicted,
            blocked=blocked,
        )

    @staticmethod
    def _cordon(target: KubernetesTarget, plan: NodeDrainPlan) -> None:
        core = target.connection.core
        try:
            node = read_json(core.read_node(plan.node, _preload_content=False))
        except ApiException as error:
            raise api_error(error, f"Reading node {plan.node}") from error
        annotations = node["metadata"].get("annotations") or {}
        if node.get("spec", {}).get("unschedulable") and CORDONED_BY_ANNOTATION not in annotations:
            raise SafetyViolation(
                f"Node {plan.node} is already cordoned by someone else; stormgate would uncordon it on revert, "
                "so it leaves it alone: pick another node"
            )
        patch: dict[str, Any] = {
            "spec": {"unschedulable": True},
            "metadata": {"annotations": {CORDONED_BY_ANNOTATION: plan.run_id or plan.fault_id}},
        }
        try:
            core.patch_node(plan.node, patch)
        except ApiException as error:
            raise api_error(error, f"Cordoning node {plan.node}") from error
        logger.info("Run %s: cordoned node %s for fault %s.", plan.run_id, plan.node, plan.fault_id)

    @staticmethod
    def _evict(target: KubernetesTarget, plan: NodeDrainPlan, pod: PodRef) -> bool:
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=pod.name, namespace=plan.namespace),
            delete_options=client.V1DeleteOptions(
                grace_period_seconds=plan.grace_period_s, preconditions=client.V1Preconditions(uid=pod.uid)
            ),
        )
        try:
            target.connection.core.create_namespaced_pod_eviction(pod.name, plan.namespace, body)
        except ApiException as error:
            if error.status == 429:
                logger.warning("Run %s: a PodDisruptionBudget blocked the eviction of %s.", plan.run_id, pod.name)
                return False
            if error.status in (404, 409):
                return True
            raise api_error(error, f"Evicting pod {plan.namespace}/{pod.name}") from error
        logger.info("Run %s: evicted pod %s/%s from node %s.", plan.run_id, plan.namespace, pod.name, plan.node)
        return True

    def _expire(self, target: KubernetesTarget, plan: NodeDrainPlan, duration_s: float) -> None:
        if self._stop.wait(duration_s):
            return
        uncordon(target.connection, plan.node)
        self._record("fault.expire", fault_id=plan.fault_id)

    def verify(self, target: Target, plan: NodeDrainPlan) -> VerifyResult:
        """Raise FaultNotEffective unless the node is unschedulable and every evicted pod left it."""
        kube = self._allowed(target)
        node = read_json(kube.connection.core.read_node(plan.node, _preload_content=False))
        if not node.get("spec", {}).get("unschedulable"):
            raise FaultNotEffective(f"Node {plan.node} is schedulable after the cordon of {plan.fault_id}")
        uids = {pod.uid for pod in plan.pods}
        if not kube.wait_gone(uids, (plan.grace_period_s or 0) + VERIFY_TIMEOUT_S):
            left = [state.name for state in kube.pod_states() if state.uid in uids]
            raise FaultNotEffective(
                f"Pods {', '.join(left)} were evicted from node {plan.node} but still exist; a PodDisruptionBudget "
                "or a finalizer may hold them"
            )
        evidence = [f"node {plan.node} is unschedulable"]
        evidence += [f"pod {pod.name} (uid {pod.uid}) left node {plan.node}" for pod in plan.pods]
        return VerifyResult(fault_id=plan.fault_id, kind=plan.kind, evidence=evidence)

    def revert(self, target: Target, plan: NodeDrainPlan) -> RevertResult:
        """Uncordon the node if it still carries stormgate's mark."""
        kube = kubernetes_target(target, self.kind)
        self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        undone = [f"uncordoned node {plan.node}"] if uncordon(kube.connection, plan.node) else []
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=undone)
