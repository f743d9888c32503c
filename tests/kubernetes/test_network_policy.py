"""NetworkPolicy partitions: accepted by the API server's validation, marked, reported unverified, cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from chaos.faults.network_policy import NetworkPolicyPartition, NetworkPolicySpec
from chaos.targets.kube_selectors import matches, negate, parse_selector
from chaos.targets.kube_watch import parse_time
from chaos.targets.kubernetes import KubernetesTarget, cleanup_kubernetes
from stormgate.errors import InconclusiveResult, UsageError
from tests.kubernetes.conftest import Cluster, body, manifest

pytestmark = pytest.mark.kubernetes

REPO = Path(__file__).resolve().parents[2]


def _policies(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    response = client.NetworkingV1Api(cluster.api).list_namespaced_network_policy(namespace, _preload_content=False)
    items: list[dict[str, Any]] = body(response)["items"]
    return items


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web,tier!=cache", {"app": "web", "tier": "cache"}, False),
        ("app in (web, api)", {"app": "api"}, True),
        ("app notin (web)", {}, True),
        ("!canary", {"canary": "1"}, False),
        ("canary", {"canary": "1"}, True),
    ],
)
def test_selector_matches_like_api(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


@pytest.mark.parametrize("selector", ["app=web", "app in (a,b)", "tier!=x", "canary", "!canary"])
def test_negated_requirement_is_complement(selector: str) -> None:
    requirement = parse_selector(selector)[0]
    for labels in ({}, {"app": "web"}, {"app": "a"}, {"tier": "x"}, {"canary": "1"}, {"app": "zzz", "tier": "y"}):
        original = matches(selector, labels)
        flipped = _matches_requirement(negate(requirement), labels)
        assert original is not flipped, (selector, labels)


def _matches_requirement(requirement: dict[str, object], labels: dict[str, str]) -> bool:
    key = str(requirement["key"])
    values = requirement.get("values") or []
    operator = requirement["operator"]
    if operator == "In":
        return labels.get(key) in values  # type: ignore[operator]
    if operator == "NotIn":
        return key not in labels or labels[key] not in values  # type: ignore[operator]
    if operator == "Exists":
        return key in labels
    return key not in labels


def test_invalid_selector_rejected() -> None:
    with pytest.raises(UsageError, match="invalid"):
        parse_selector("app=web,(oops")


@pytest.mark.parametrize(
    "spec",
    [
        NetworkPolicySpec(mode="isolate", direction="ingress", allow_unverified=True),
        NetworkPolicySpec(mode="isolate", direction="egress", allow_unverified=True),
        NetworkPolicySpec(mode="isolate", direction="both", allow_unverified=True),
        NetworkPolicySpec(mode="between", peer_selector="app=db,tier in (primary,replica)", allow_unverified=True),
    ],
    ids=["ingress", "egress", "both", "between"],
)
def test_policies_accepted_and_reverted(
    cluster: Cluster,
    namespace: str,
    deploy: Callable[..., None],
    make_target: Callable[..., KubernetesTarget],
    spec: NetworkPolicySpec,
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    fault = NetworkPolicyPartition(spec)
    plan = fault.plan(target, fault_id="part/1", seed=1, run_id="run-np")

    fault.inject(target, plan)
    result = fault.verify(target, plan)

    stored = _policies(cluster, namespace)
    assert sorted(item["metadata"]["name"] for item in stored) == sorted(plan.names)
    for item in stored:
        metadata = item["metadata"]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "stormgate"
        assert metadata["labels"]["stormgate/run-id"] == "run-np"
        expires_at = metadata["annotations"]["stormgate/expires-at"]
        assert expires_at.endswith("Z")
        assert parse_time(expires_at) > datetime.now(UTC).timestamp()
        egress = item["spec"].get("egress", [])
        if "Egress" in item["spec"]["policyTypes"]:
            ports = egress[0]["ports"]
            assert {(port["protocol"], port["port"]) for port in ports} == {("UDP", 53), ("TCP", 53)}
    assert result.enforcement == "unverified"
    assert "simulated nodes" in result.reason or cluster.controlplane is None

    undone = fault.revert(target, plan)
    assert len(undone.undone) == len(plan.names)
    assert _policies(cluster, namespace) == []
    assert fault.revert(target, plan).undone == []


def test_unverified_partition_is_inconclusive(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    if cluster.controlplane is None:
        pytest.skip("a real cluster's network plugin may enforce the policy")
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    fault = NetworkPolicyPartition(NetworkPolicySpec())
    plan = fault.plan(target, fault_id="part-strict", seed=1, run_id="run-strict")
    fault.inject(target, plan)
    try:
        with pytest.raises(InconclusiveResult, match="unverified"):
            fault.verify(target, plan)
    finally:
        fault.revert(target, plan)


def test_partition_expires_after_duration(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    fault = NetworkPolicyPartition(NetworkPolicySpec(duration_s=1.0, allow_unverified=True))
    plan = fault.plan(target, fault_id="part-short", seed=1, run_id="run-short")

    fault.inject(target, plan)

    assert fault.active
    assert fault.wait(15.0)
    assert _policies(cluster, namespace) == []


CRASHING_HARNESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from chaos.faults.network_policy import NetworkPolicyPartition, NetworkPolicySpec
    from chaos.targets.kubernetes import KubernetesTarget

    kubeconfig, context, namespace = sys.argv[1:4]
    target = KubernetesTarget.from_options(
        context=context, kubeconfig=Path(kubeconfig) if kubeconfig else None, namespace=namespace,
        selector="app=web", allowed_contexts=(context,), allowed_namespaces=(namespace,),
    )
    fault = NetworkPolicyPartition(NetworkPolicySpec(mode="between", peer_selector="app=db", allow_unverified=True))
    plan = fault.plan(target, fault_id="part-crash", seed=1, run_id="run-crash")
    fault.inject(target, plan)
    print("injected", flush=True)
    time.sleep(120)
    """
)


def test_cleanup_after_harness_sigkill(
    cluster: Cluster, make_namespace: Callable[[], str], deploy: Callable[..., None]
) -> None:
    namespace, bystander = make_namespace(), make_namespace()
    deploy(namespace, "web", 2)
    # A policy that stormgate did not make must survive the cleanup.
    client.NetworkingV1Api(cluster.api).create_namespaced_network_policy(
        bystander,
        manifest({"metadata": {"name": "team-policy"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    )
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_HARNESS, str(cluster.kubeconfig or ""), cluster.context, namespace],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "injected"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert len(_policies(cluster, namespace)) == 2

    lines = cleanup_kubernetes(
        context=cluster.context, namespaces=[namespace, bystander], kubeconfig=cluster.kubeconfig
    )

    assert len(lines) == 2
    assert all(line.startswith(f"deleted NetworkPolicy {namespace}/stormgate-") for line in lines)
    assert _policies(cluster, namespace) == []
    assert [item["metadata"]["name"] for item in _policies(cluster, bystander)] == ["team-policy"]
    assert cleanup_kubernetes(context=cluster.context, namespaces=[namespace], kubeconfig=cluster.kubeconfig) == []
