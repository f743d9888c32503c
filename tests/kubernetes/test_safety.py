"""Refusals of the Kubernetes target: unknown contexts, system and unlisted namespaces, the harness's own pods."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chaos.faults.node_drain import NodeDrain, NodeDrainSpec
from chaos.faults.pod_kill import PodKill, PodKillSpec
from chaos.targets.kube_safety import KubeSafety, protect_selector
from chaos.targets.kubernetes import KubernetesOptions, KubernetesTarget
from stormgate.errors import SafetyViolation, UsageError
from tests.kubernetes.conftest import Cluster

pytestmark = pytest.mark.kubernetes


def test_unknown_context_rejected(cluster: Cluster) -> None:
    options = KubernetesOptions(
        context=cluster.context,
        kubeconfig=cluster.kubeconfig,
        namespace="shop",
        selector="app=web",
        allowed_contexts=("staging-*", "qa"),
        allowed_namespaces=("shop",),
    )
    with pytest.raises(SafetyViolation) as error:
        KubernetesTarget.from_options(options)
    message = str(error.value)
    assert repr(cluster.context) in message
    assert "staging-*, qa" in message


def test_context_missing_from_kubeconfig_rejected(cluster: Cluster) -> None:
    with pytest.raises(UsageError, match="'prod' is not in the kubeconfig"):
        KubernetesTarget.from_options(
            context="prod",
            kubeconfig=cluster.kubeconfig,
            namespace="shop",
            selector="app=web",
            allowed_contexts=("prod",),
            allowed_namespaces=("shop",),
        )


def test_no_context_rejected(cluster: Cluster) -> None:
    with pytest.raises(UsageError, match="No kube context given"):
        KubernetesTarget.from_options(
            context="",
            kubeconfig=cluster.kubeconfig,
            namespace="shop",
            selector="app=web",
            allowed_contexts=("*",),
            allowed_namespaces=("shop",),
        )


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_system_namespace_rejected_even_if_allowed(cluster: Cluster, namespace: str) -> None:
    with pytest.raises(SafetyViolation, match="system namespace"):
        KubernetesTarget.from_options(
            context=cluster.context,
            kubeconfig=cluster.kubeconfig,
            namespace=namespace,
            selector="app=web",
            allowed_contexts=(cluster.context,),
            allowed_namespaces=("*",),
        )


def test_unlisted_namespace_rejected(cluster: Cluster) -> None:
    with pytest.raises(SafetyViolation) as error:
        KubernetesTarget.from_options(
            context=cluster.context,
            kubeconfig=cluster.kubeconfig,
            namespace="payments",
            selector="app=web",
            allowed_contexts=(cluster.context,),
            allowed_namespaces=("shop", "staging-*"),
        )
    assert "'payments'" in str(error.value)
    assert "shop, staging-*" in str(error.value)


def test_empty_selector_rejected() -> None:
    with pytest.raises(SafetyViolation, match="selector is empty"):
        protect_selector(" ")


def test_allowlists_need_an_entry() -> None:
    with pytest.raises(ValueError):
        KubeSafety(allowed_contexts=(), allowed_namespaces=("shop",))


def test_harness_pods_never_selected(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    # A load generator that carries the workload's label by mistake must still never be selected.
    deploy(namespace, "loadgen", 2, labels={"role": "x", "app.kubernetes.io/part-of": "stormgate"})
    target = make_target(namespace, selector="app in (web,loadgen)")

    names = {instance.name for instance in target.instances()}

    assert len(names) == 2
    assert all(name.startswith("web-") for name in names)
    assert all(name.startswith("loadgen-") for name in target.protected_instances())
    plan = PodKill(PodKillSpec(count=1)).plan(target, fault_id="kill-safe", seed=1)
    assert plan.pods[0].name.startswith("web-")


def test_kill_of_every_pod_rejected(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    with pytest.raises(SafetyViolation, match="all 2 instances"):
        PodKill(PodKillSpec(count=2)).plan(target, fault_id="kill-all", seed=1)


def test_node_faults_off_by_default(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    with pytest.raises(SafetyViolation, match="allow_node_faults"):
        NodeDrain(NodeDrainSpec()).plan(target, fault_id="drain-off", seed=1)
