"""The harness works with exactly the permissions in deploy/, and a verb outside them is rejected with 403."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from chaos.faults.network_policy import NetworkPolicyPartition, NetworkPolicySpec
from chaos.faults.node_drain import NodeDrain, NodeDrainSpec
from chaos.faults.pod_kill import PodKill, PodKillSpec
from chaos.targets.kube_client import KubeForbidden
from chaos.targets.kubernetes import KubernetesTarget, cleanup_kubernetes
from tests.kubernetes.conftest import Cluster, body, current_context, manifest, new_api_client

pytestmark = pytest.mark.kubernetes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _documents(name: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all((DEPLOY / name).read_text()) if document]


def _apply_rbac(api: client.ApiClient, *, workload_namespace: str, harness_namespace: str) -> None:
    """Create deploy/rbac.yaml's Role and RoleBinding in the workload namespace, bound to the harness's account."""
    rbac = client.RbacAuthorizationV1Api(api)
    for document in _documents("rbac.yaml"):
        if document["kind"] == "ServiceAccount":
            document["metadata"]["namespace"] = harness_namespace
            client.CoreV1Api(api).create_namespaced_service_account(harness_namespace, manifest(document))
        elif document["kind"] == "Role":
            document["metadata"]["namespace"] = workload_namespace
            rbac.create_namespaced_role(workload_namespace, manifest(document))
        elif document["kind"] == "RoleBinding":
            document["metadata"]["namespace"] = workload_namespace
            document["subjects"][0]["namespace"] = harness_namespace
            rbac.create_namespaced_role_binding(workload_namespace, manifest(document))
        else:
            raise AssertionError(f"unexpected kind {document['kind']} in deploy/rbac.yaml")


@dataclass
class Harness:
    """ServiceAccount stormgate with deploy/rbac.yaml's Role on one workload namespace."""

    namespace: str
    kubeconfig: Path
    context: str
    account_namespace: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.namespace, self.kubeconfig, self.context))


@pytest.fixture
def harness(cluster: Cluster, make_namespace: Callable[[], str], tmp_path: Path) -> Harness:
    plane = cluster.require_controlplane("it issues service-account kubeconfigs")
    workload_namespace, harness_namespace = make_namespace(), make_namespace()
    _apply_rbac(cluster.api, workload_namespace=workload_namespace, harness_namespace=harness_namespace)
    kubeconfig = plane.serviceaccount_kubeconfig(
        harness_namespace, "stormgate", create=False, path=tmp_path / "stormgate.kubeconfig"
    )
    return Harness(workload_namespace, kubeconfig, current_context(kubeconfig), harness_namespace)


def test_harness_runs_with_deploy_role(
    cluster: Cluster,
    harness: Harness,
    deploy: Callable[..., None],
    make_target: Callable[..., KubernetesTarget],
) -> None:
    namespace, kubeconfig, context = harness
    deploy(namespace, "web", 3)
    target = make_target(namespace, kubeconfig=kubeconfig, context=context, allowed_contexts=(context,))

    kill = PodKill(PodKillSpec(count=1))
    kill_plan = kill.plan(target, fault_id="kill-rbac", seed=2, run_id="run-rbac")
    probe = target.recovery_probe([i for i in target.instances() if i.name == kill_plan.pods[0].name])
    kill.inject(target, kill_plan)
    kill.verify(target, kill_plan)
    assert probe.wait(30.0), probe.describe()

    partition = NetworkPolicyPartition(NetworkPolicySpec(allow_unverified=True))
    partition_plan = partition.plan(target, fault_id="part-rbac", seed=2, run_id="run-rbac")
    partition.inject(target, partition_plan)
    verified = partition.verify(target, partition_plan)
    assert verified.enforcement == "unverified"

    lines = cleanup_kubernetes(context=context, namespaces=[namespace], kubeconfig=kubeconfig)
    assert lines == [f"deleted NetworkPolicy {namespace}/{partition_plan.names[0]}"]
    assert target.connection.request_total > 0


@pytest.mark.parametrize(
    ("action", "call"),
    [
        ("get one pod", lambda api, ns: client.CoreV1Api(api).read_namespaced_pod("any", ns)),
        (
            "scale the Deployment",
            lambda api, ns: client.AppsV1Api(api).patch_namespaced_deployment_scale(
                "web", ns, {"spec": {"replicas": 9}}
            ),
        ),
        (
            "create a ConfigMap",
            lambda api, ns: client.CoreV1Api(api).create_namespaced_config_map(
                ns, manifest({"metadata": {"name": "x"}, "data": {}})
            ),
        ),
        (
            "patch a NetworkPolicy",
            lambda api, ns: client.NetworkingV1Api(api).patch_namespaced_network_policy(
                "x", ns, {"metadata": {"labels": {"a": "b"}}}
            ),
        ),
        ("list nodes", lambda api, ns: client.CoreV1Api(api).list_node()),
        ("list pods in kube-system", lambda api, ns: client.CoreV1Api(api).list_namespaced_pod("kube-system")),
    ],
)
def test_verb_outside_role_forbidden(
    harness: Harness, action: str, call: Callable[[client.ApiClient, str], object]
) -> None:
    namespace, kubeconfig, context = harness
    api = new_api_client(kubeconfig, context)
    try:
        with pytest.raises(ApiException) as error:
            call(api, namespace)
        assert error.value.status == 403, action
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def node_fault_role(cluster: Cluster, harness: Harness) -> Iterator[None]:
    """Create deploy/rbac-node-faults.yaml with unique names, bound to the harness's account."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    suffix = secrets.token_hex(3)
    role, binding = _documents("rbac-node-faults.yaml")
    role["metadata"]["name"] += f"-{suffix}"
    binding["metadata"]["name"] += f"-{suffix}"
    binding["roleRef"]["name"] = role["metadata"]["name"]
    binding["subjects"][0]["namespace"] = harness.account_namespace
    rbac.create_cluster_role(manifest(role))
    rbac.create_cluster_role_binding(manifest(binding))
    yield
    rbac.delete_cluster_role_binding(binding["metadata"]["name"])
    rbac.delete_cluster_role(role["metadata"]["name"])


def test_node_drain_needs_cluster_role(
    cluster: Cluster,
    harness: Harness,
    deploy: Callable[..., None],
    make_target: Callable[..., KubernetesTarget],
) -> None:
    namespace, kubeconfig, context = harness
    deploy(namespace, "web", 3)
    target = make_target(
        namespace, kubeconfig=kubeconfig, context=context, allowed_contexts=(context,), allow_node_faults=True
    )
    fault = NodeDrain(NodeDrainSpec())
    plan = fault.plan(target, fault_id="drain-rbac", seed=1, run_id="run-rbac")
    with pytest.raises(KubeForbidden, match="403"):
        fault.inject(target, plan)


@pytest.mark.usefixtures("node_fault_role")
def test_node_drain_with_cluster_role(
    cluster: Cluster,
    harness: Harness,
    deploy: Callable[..., None],
    make_target: Callable[..., KubernetesTarget],
) -> None:
    namespace, kubeconfig, context = harness
    deploy(namespace, "web", 4)
    target = make_target(
        namespace, kubeconfig=kubeconfig, context=context, allowed_contexts=(context,), allow_node_faults=True
    )
    fault = NodeDrain(NodeDrainSpec())
    plan = fault.plan(target, fault_id="drain-1", seed=5, run_id="run-drain")
    probe = target.recovery_probe([])

    result = fault.inject(target, plan)
    fault.verify(target, plan)

    assert result.evicted == [pod.name for pod in plan.pods]
    assert probe.wait(30.0), probe.describe()
    assert all(state.node != plan.node for state in target.pod_states() if state.counts_ready)
    node = body(client.CoreV1Api(cluster.api).read_node(plan.node, _preload_content=False))
    assert node["spec"]["unschedulable"]
    assert node["metadata"]["annotations"]["stormgate/cordoned-by"] == "run-drain"

    # A crashed harness leaves the cordon; the cleanup finds the node by its mark.
    lines = cleanup_kubernetes(context=context, namespaces=[namespace], kubeconfig=kubeconfig)
    assert lines == [f"uncordoned node {plan.node}"]
    node = body(client.CoreV1Api(cluster.api).read_node(plan.node, _preload_content=False))
    assert not node["spec"].get("unschedulable")
    assert "stormgate/cordoned-by" not in (node["metadata"].get("annotations") or {})
    assert fault.revert(target, plan).undone == []


def _create_dry_run(api: client.ApiClient, document: dict[str, Any], namespace: str) -> None:
    """Send the manifest to the API server with dryRun=All, which validates it and stores nothing."""
    kind = document["kind"]
    if "namespace" in document["metadata"]:
        document["metadata"]["namespace"] = namespace
    body = manifest(document)
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    creators: dict[str, Callable[[], object]] = {
        "Namespace": lambda: core.create_namespace(body, dry_run="All"),
        "PersistentVolumeClaim": lambda: core.create_namespaced_persistent_volume_claim(namespace, body, dry_run="All"),
        "CronJob": lambda: batch.create_namespaced_cron_job(namespace, body, dry_run="All"),
        "Deployment": lambda: apps.create_namespaced_deployment(namespace, body, dry_run="All"),
        "Service": lambda: core.create_namespaced_service(namespace, body, dry_run="All"),
        "ClusterRole": lambda: rbac.create_cluster_role(body, dry_run="All"),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(body, dry_run="All"),
    }
    creators[kind]()


@pytest.mark.parametrize("name", ["namespace.yaml", "cronjob.yaml", "locust.yaml", "rbac-node-faults.yaml"])
def test_deploy_manifests_valid(cluster: Cluster, namespace: str, name: str) -> None:
    documents = _documents(name)
    assert documents
    for document in documents:
        labels = document["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "stormgate", document["metadata"]["name"]
        template = document.get("spec", {}).get("template") or document.get("spec", {}).get("jobTemplate", {}).get(
            "spec", {}
        ).get("template")
        if template is not None:
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stormgate"
        _create_dry_run(cluster.api, document, namespace)
