"""Safety rules of the Kubernetes target: context and namespace allowlists, and the labels of stormgate's objects.

Every check runs before the target sends its first request that changes anything, so an
unknown context or a system namespace is rejected before a fault could touch it.
"""

from __future__ import annotations

import fnmatch

from pydantic import BaseModel, ConfigDict, Field

from stormgate.errors import SafetyViolation

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
"""Namespaces that no allowlist can open to faults."""

PART_OF_LABEL = "app.kubernetes.io/part-of"
HARNESS_PART_OF = "stormgate"
"""Value of PART_OF_LABEL on the harness's own pods (load generators, Prometheus); faults never select them."""

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "stormgate"
"""Value of MANAGED_BY_LABEL on every object that a fault creates, so that a cleanup finds it by label."""

RUN_ID_LABEL = "stormgate/run-id"
FAULT_ID_LABEL = "stormgate/fault-id"
EXPIRES_AT_ANNOTATION = "stormgate/expires-at"
"""UTC time in ISO 8601 after which a fault's object is a leftover, such as 2026-01-31T02:00:00.000Z."""
CORDONED_BY_ANNOTATION = "stormgate/cordoned-by"
"""Run id of the fault that cordoned a node; present only on nodes that stormgate cordoned."""

IN_CLUSTER_CONTEXT = "in-cluster"
"""Context name that stands for the pod's own service account, which the context allowlist must contain to use it."""

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
NOT_HARNESS_SELECTOR = f"{PART_OF_LABEL}!={HARNESS_PART_OF}"


class KubeSafety(BaseModel):
    """Allowlists of the Kubernetes target; faults act only inside them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_contexts: tuple[str, ...] = Field(min_length=1)
    """Kubeconfig context names (fnmatch patterns) that faults may act on; "in-cluster" for in-cluster config."""
    allowed_namespaces: tuple[str, ...] = Field(min_length=1)
    """Namespace names (fnmatch patterns) that faults may act on; system namespaces stay rejected."""

    def check_context(self, context: str) -> None:
        """Raise SafetyViolation unless the context matches the allowlist."""
        if any(fnmatch.fnmatchcase(context, pattern) for pattern in self.allowed_contexts):
            return
        raise SafetyViolation(
            f"Kube context {context!r} is not in the context allowlist ({', '.join(self.allowed_contexts)}); "
            "add it to allowed_contexts (--kube-allowed-context) if faults may act on that cluster"
        )

    def check_namespace(self, namespace: str) -> None:
        """Raise SafetyViolation for a system namespace or a namespace outside the allowlist."""
        if namespace in SYSTEM_NAMESPACES:
            raise SafetyViolation(
                f"Namespace {namespace!r} is a system namespace ({', '.join(sorted(SYSTEM_NAMESPACES))}); "
                "faults never act on it, whatever the allowlist says: run the workload in its own namespace"
            )
        if any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.allowed_namespaces):
            return
        raise SafetyViolation(
            f"Namespace {namespace!r} is not in the namespace allowlist ({', '.join(self.allowed_namespaces)}); "
            "add it to allowed_namespaces (--kube-allowed-namespace) if faults may act on it"
        )


def is_harness_object(labels: dict[str, str] | None) -> bool:
    """Return True for the harness's own pods, which faults never select."""
    return (labels or {}).get(PART_OF_LABEL) == HARNESS_PART_OF


def protect_selector(selector: str) -> str:
    """Return the label selector with a term that excludes the harness's pods on the server side."""
    selector = selector.strip()
    if not selector:
        raise SafetyViolation(
            "The workload's label selector is empty, which would select every pod in the namespace; "
            "give the selector of the workload's pods, such as app=web"
        )
    return f"{selector},{NOT_HARNESS_SELECTOR}"
