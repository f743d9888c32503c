"""Network partition through NetworkPolicy: isolate a workload's pods, or cut two groups of pods apart.

Modes:
- `isolate`: deny ingress, egress or both for the pods of `selector` (default: the target's);
- `between`: deny traffic in both directions between the pods of `selector` and those of
  `peer_selector`, and leave every other path open. NetworkPolicy only allows, so each side
  allows everything except the other side (see chaos.targets.kube_selectors.complement_peers).

Egress to kube-dns (UDP and TCP 53 in kube-system) stays allowed, so pods keep resolving names.

Every policy carries `app.kubernetes.io/managed-by: stormgate`, `stormgate/run-id`,
`stormgate/fault-id` and the annotation `stormgate/expires-at`, so a cleanup finds it after a crash.

Verification and its verdict: the API server accepting the policy does not prove that the
network plugin enforces it. stormgate checks that the policies exist as created, and the result
reports `enforcement: unverified` when no check showed that packets are dropped. An unverified
partition makes the scenario inconclusive (InconclusiveResult, exit code 3), because a
partition that silently did nothing would make the recovery look perfect; a scenario that
accepts this sets `allow_unverified: true`, and the result and report then say "unverified".
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal, Self

from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, VerifyResult, check_ids
from chaos.faults.pod_kill import kubernetes_target
from chaos.targets.base import Target
from chaos.targets.kube_cleanup import expiry, label_value, resource_name
from chaos.targets.kube_client import api_error, read_json
from chaos.targets.kube_safety import (
    EXPIRES_AT_ANNOTATION,
    FAULT_ID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RUN_ID_LABEL,
)
from chaos.targets.kube_selectors import complement_peers, label_selector, parse_selector
from chaos.targets.kubernetes import KubernetesTarget
from stormgate.errors import FaultNotEffective, InconclusiveResult

logger = logging.getLogger(__name__)

DEFAULT_MAX_LIFETIME_S = 3600.0
"""Expiry of a partition without a duration: after it, a cleanup treats the policy as a leftover."""
STOP_TIMEOUT_S = 10.0
SIMULATED_NODE_MARKERS = ("kwok",)
"""containerRuntimeVersion prefixes of nodes where no container runs, so no policy can be enforced."""


class NetworkPolicySpec(BaseModel):
    """Scenario settings of a NetworkPolicy partition."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["network-policy"] = "network-policy"
    mode: Literal["isolate", "between"] = "isolate"
    direction: Literal["ingress", "egress", "both"] = "both"
    """Traffic that `isolate` denies; `between` always cuts both directions."""
    selector: str = ""
    """Pods to partition; empty takes the target's workload selector."""
    peer_selector: str = ""
    """The other side of a `between` partition, in the same namespace."""
    duration_s: float | None = Field(default=None, gt=0.0)
    """How long the policies stay; None keeps them until revert."""
    max_lifetime_s: float = Field(default=DEFAULT_MAX_LIFETIME_S, gt=0.0)
    """Expiry written on the policies when there is no duration."""
    allow_unverified: bool = False
    """Accept a partition whose enforcement no check confirmed; the result then reports "unverified"."""

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        if self.mode == "between" and not self.peer_selector:
            raise ValueError("a network-policy partition in mode between needs peer_selector, the other side")
        if self.mode == "isolate" and self.peer_selector:
            raise ValueError("peer_selector applies to mode between only; remove it or set mode: between")
        return self


class NetworkPolicyPlan(FaultPlan):
    """The NetworkPolicy objects exactly as they will be created."""

    kind: Literal["network-policy"] = "network-policy"
    namespace: str
    policies: list[dict[str, Any]]
    expires_at: str
    """UTC ISO 8601 expiry written on every policy."""
    allow_unverified: bool = False

    @property
    def names(self) -> list[str]:
        return [policy["metadata"]["name"] for policy in self.policies]

    def describe(self) -> str:
        lines = [super().describe() + f", expires {self.expires_at}"]
        for policy in self.policies:
            spec = policy["spec"]
            lines.append(
                f"  NetworkPolicy {self.namespace}/{policy['metadata']['name']}: {', '.join(spec['policyTypes'])} "
                f"for {spec['podSelector']}, {len(spec.get('ingress', []))} ingress and "
                f"{len(spec.get('egress', []))} egress allow rules"
            )
        return "\n".join(lines)


class NetworkPolicyVerifyResult(VerifyResult):
    enforcement: Literal["verified", "unverified"]
    """Whether something showed that packets are really dropped; "unverified" is never a silent pass."""
    reason: str = ""


DNS_EGRESS_RULE: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
"""Egress that every partition keeps. NOTE: clusters with NodeLocal DNSCache resolve through a
link-local address, which this rule does not cover."""


def _metadata(name: str, *, run_id: str, fault_id: str, expires_at: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {
            MANAGED_BY_LABEL: MANAGED_BY,
            RUN_ID_LABEL: label_value(run_id or "none"),
            FAULT_ID_LABEL: label_value(fault_id),
        },
        "annotations": {EXPIRES_AT_ANNOTATION: expires_at, "stormgate/fault-id": fault_id, "stormgate/run-id": run_id},
    }


def isolate_policy(
    name: str, selector: str, direction: str, *, run_id: str, fault_id: str, expires_at: str
) -> dict[str, Any]:
    """Return a policy that denies ingress and/or egress of the selected pods, DNS egress excepted."""
    types = {"ingress": ["Ingress"], "egress": ["Egress"], "both": ["Ingress", "Egress"]}[direction]
    spec: dict[str, Any] = {"podSelector": label_selector(selector), "policyTypes": types}
    if "Ingress" in types:
        spec["ingress"] = []
    if "Egress" in types:
        spec["egress"] = [DNS_EGRESS_RULE]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, run_id=run_id, fault_id=fault_id, expires_at=expires_at),
        "spec": spec,
    }


def between_policy(
    name: str, selector: str, peer_selector: str, namespace: str, *, run_id: str, fault_id: str, expires_at: str
) -> dict[str, Any]:
    """Return a policy on `selector`'s pods that allows every peer except `peer_selector`'s pods, and DNS.

    NOTE: the allowed peers are pods of any namespace. Traffic of these pods from or to other
    addresses (nodes, external clients) is denied too.
    """
    peers = complement_peers(peer_selector, namespace)
    spec = {
        "podSelector": label_selector(selector),
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": peers}],
        "egress": [DNS_EGRESS_RULE, {"to": peers}],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, run_id=run_id, fault_id=fault_id, expires_at=expires_at),
        "spec": spec,
    }


class NetworkPolicyPartition(Fault[NetworkPolicyPlan]):
    """Create NetworkPolicies for `duration_s` or until revert."""

    kind = "network-policy"
    plan_model = NetworkPolicyPlan

    def __init__(self, spec: NetworkPolicySpec) -> None:
        super().__init__()
        self.spec = spec
        self._thread: threading.Thread | None = None

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> NetworkPolicyPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        kube = kubernetes_target(target, self.kind)
        selector = self.spec.selector or kube.options.selector
        parse_selector(selector)
        expires_at = expiry(self.spec.duration_s or self.spec.max_lifetime_s)
        ids = {"run_id": run_id, "fault_id": fault_id, "expires_at": expires_at}
        if self.spec.mode == "isolate":
            policies = [isolate_policy(resource_name("stormgate", fault_id), selector, self.spec.direction, **ids)]
        else:
            peer = self.spec.peer_selector
            parse_selector(peer)
            policies = [
                between_policy(resource_name("stormgate-a", fault_id), selector, peer, kube.namespace, **ids),
                between_policy(resource_name("stormgate-b", fault_id), peer, selector, kube.namespace, **ids),
            ]
        return NetworkPolicyPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            instances=[instance for instance in kube.instances()],
            duration_s=self.spec.duration_s,
            namespace=kube.namespace,
            policies=policies,
            expires_at=expires_at,
            allow_unverified=self.spec.allow_unverified,
        )

    def inject(self, target: Target, plan: NetworkPolicyPlan) -> InjectResult:
        kube = kubernetes_target(target, self.kind)
        kube.safety.check_namespace(plan.namespace)
        networking = kube.connection.networking
        created = []
        for policy in plan.policies:
            try:
                # The client serializes a plain dict as it is; the plan stores the manifest as JSON.
                networking.create_namespaced_network_policy(plan.namespace, policy)  # type: ignore[arg-type]
            except ApiException as error:
                raise api_error(
                    error, f"Creating NetworkPolicy {plan.namespace}/{policy['metadata']['name']}"
                ) from error
            created.append(f"NetworkPolicy {plan.namespace}/{policy['metadata']['name']}")
            logger.info(
                "Run %s: created NetworkPolicy %s/%s for fault %s.",
                plan.run_id,
                plan.namespace,
                policy["metadata"]["name"],
                plan.fault_id,
            )
        if plan.duration_s is not None:
            duration_s = plan.duration_s
            self._thread = self._start_background(plan.fault_id, lambda: self._expire(kube, plan, duration_s))
        return InjectResult(fault_id=plan.fault_id, kind=plan.kind, touched=created)

    def _expire(self, target: KubernetesTarget, plan: NetworkPolicyPlan, duration_s: float) -> None:
        if self._stop.wait(duration_s):
            return
        self._delete(target, plan)
        self._record("fault.expire", fault_id=plan.fault_id)

    def verify(self, target: Target, plan: NetworkPolicyPlan) -> NetworkPolicyVerifyResult:
        """Check that each policy exists as planned; then report enforcement as verified or unverified.

        Raise FaultNotEffective when a policy is missing or differs, and InconclusiveResult when
        enforcement is unverified and the scenario did not set allow_unverified.
        """
        kube = kubernetes_target(target, self.kind)
        evidence = []
        for policy in plan.policies:
            name = policy["metadata"]["name"]
            try:
                stored = read_json(
                    kube.connection.networking.read_namespaced_network_policy(
                        name, plan.namespace, _preload_content=False
                    )
                )
            except ApiException as error:
                if error.status == 404:
                    raise FaultNotEffective(
                        f"NetworkPolicy {plan.namespace}/{name} of {plan.fault_id} does not exist after its creation; "
                        "something deleted it, such as a controller that reconciles policies in this namespace"
                    ) from error
                raise api_error(error, f"Reading NetworkPolicy {plan.namespace}/{name}") from error
            if stored["spec"].get("podSelector") != policy["spec"]["podSelector"]:
                raise FaultNotEffective(
                    f"NetworkPolicy {plan.namespace}/{name} selects {stored['spec'].get('podSelector')}, "
                    f"not {policy['spec']['podSelector']} as planned; another writer changed it"
                )
            evidence.append(f"NetworkPolicy {plan.namespace}/{name} accepted (uid {stored['metadata']['uid']})")

        reason = self._unverified_reason(kube)
        result = NetworkPolicyVerifyResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            evidence=[*evidence, f"enforcement unverified: {reason}"],
            enforcement="unverified",
            reason=reason,
        )
        if not plan.allow_unverified:
            raise InconclusiveResult(
                f"Partition {plan.fault_id} on {target.name} is unverified: {reason}. A partition that may not "
                "drop packets cannot support a verdict; set allow_unverified: true in the fault to accept it"
            )
        logger.warning("Run %s: partition %s is unverified: %s.", plan.run_id, plan.fault_id, reason)
        return result

    @staticmethod
    def _unverified_reason(target: KubernetesTarget) -> str:
        nodes = {state.node for state in target.pod_states() if state.node}
        try:
            items = read_json(target.connection.core.list_node(_preload_content=False)).get("items") or []
        except ApiException:
            items = []
        runtimes = {
            item["metadata"]["name"]: (item.get("status", {}).get("nodeInfo", {}) or {}).get(
                "containerRuntimeVersion", ""
            )
            for item in items
        }
        simulated = sorted(node for node in nodes if runtimes.get(node, "").startswith(SIMULATED_NODE_MARKERS))
        if simulated:
            return (
                f"the pods run on simulated nodes ({', '.join(simulated[:3])}), where no network plugin "
                "enforces NetworkPolicy"
            )
        # TODO: probe from inside the cluster (a short-lived pod labelled part-of stormgate that
        # connects to a partitioned pod and must fail, and to a control pod and must succeed).
        return "no in-cluster probe checked that the network plugin drops the denied traffic"

    def revert(self, target: Target, plan: NetworkPolicyPlan) -> RevertResult:
        """Delete the fault's policies; safe to repeat and from another process."""
        kube = kubernetes_target(target, self.kind)
        self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        undone = self._delete(kube, plan)
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=undone)

    @staticmethod
    def _delete(target: KubernetesTarget, plan: NetworkPolicyPlan) -> list[str]:
        undone = []
        for name in plan.names:
            try:
                target.connection.networking.delete_namespaced_network_policy(name, plan.namespace)
            except ApiException as error:
                if error.status == 404:
                    continue
                raise api_error(error, f"Deleting NetworkPolicy {plan.namespace}/{name}") from error
            undone.append(f"deleted NetworkPolicy {plan.namespace}/{name}")
            logger.info("Run %s: deleted NetworkPolicy %s/%s of %s.", plan.run_id, plan.namespace, name, plan.fault_id)
        return undone
