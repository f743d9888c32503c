"""Fixtures of the Kubernetes target's tests: one local control plane per session, or a real cluster.

By default the session starts `ControlPlane` (etcd, kube-apiserver, controller-manager,
scheduler and KWOK on 127.0.0.1) and skips every test with the reason from `find_binaries()`
when the binaries are not built. With STORMGATE_KUBE_CONTEXT=NAME the same tests run against
that context of ~/.kube/config (or of the file in STORMGATE_KUBECONFIG) instead; tests that need
the local control plane's controls (etcd compaction, a known readiness delay, service-account
kubeconfigs) skip there. Every test works in namespaces of its own, named `sg-test-<hex>`,
which are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, config

from chaos.targets.kube_watch import pod_state
from chaos.targets.kubernetes import KubernetesOptions, KubernetesTarget
from tests.kubernetes.controlplane import BinaryNotFoundError, ControlPlane, find_binaries

POD_READY_DELAY_S = 1.0
"""Readiness delay that KWOK plays for every pod of the local control plane."""
CONTEXT_VARIABLE = "STORMGATE_KUBE_CONTEXT"
KUBECONFIG_VARIABLE = "STORMGATE_KUBECONFIG"


@dataclass
class Cluster:
    """The cluster a test session runs against."""

    kubeconfig: Path | None
    context: str
    controlplane: ControlPlane | None
    """The local control plane; None against a real cluster."""
    api: client.ApiClient

    @property
    def pod_ready_delay_s(self) -> float | None:
        return POD_READY_DELAY_S if self.controlplane is not None else None

    def require_controlplane(self, reason: str) -> ControlPlane:
        if self.controlplane is None:
            pytest.skip(f"needs the local control plane ({reason}); it does not run with {CONTEXT_VARIABLE}")
        return self.controlplane


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    context = os.environ.get(CONTEXT_VARIABLE, "")
    if context:
        kubeconfig = Path(os.environ[KUBECONFIG_VARIABLE]) if os.environ.get(KUBECONFIG_VARIABLE) else None
        api = new_api_client(kubeconfig, context)
        yield Cluster(kubeconfig=kubeconfig, context=context, controlplane=None, api=api)
        api.close()  # type: ignore[no-untyped-call]
        return
    try:
        find_binaries()
    except BinaryNotFoundError as error:
        pytest.skip(str(error))
    # The watch cache is off so that a compaction of etcd really makes old resourceVersions fail with 410.
    with ControlPlane(nodes=3, pod_ready_delay=POD_READY_DELAY_S, watch_cache=False) as plane:
        context = current_context(plane.kubeconfig)
        api = new_api_client(plane.kubeconfig, context)
        yield Cluster(kubeconfig=plane.kubeconfig, context=context, controlplane=plane, api=api)
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def make_namespace(cluster: Cluster) -> Iterator[Callable[[], str]]:
    """Create namespaces with unique names; delete them after the test."""
    core = client.CoreV1Api(cluster.api)
    created: list[str] = []

    def create() -> str:
        name = f"sg-test-{secrets.token_hex(4)}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        created.append(name)
        return name

    yield create
    for name in created:
        _release_finalizers(core, name)
        core.delete_namespace(name)


@pytest.fixture
def namespace(make_namespace: Callable[[], str]) -> str:
    return make_namespace()


def _release_finalizers(core: client.CoreV1Api, namespace: str) -> None:
    """Remove test finalizers from pods, so that the namespace can go away."""
    for pod in body(core.list_namespaced_pod(namespace, _preload_content=False))["items"]:
        if pod["metadata"].get("finalizers"):
            core.patch_namespaced_pod(pod["metadata"]["name"], namespace, {"metadata": {"finalizers": None}})


def body(response: object) -> dict[str, Any]:
    """Decode a response requested with _preload_content=False."""
    return cast(dict[str, Any], json.loads(cast(Any, response).data))


def manifest(document: dict[str, Any]) -> Any:
    """Pass a plain manifest where the client's signature names a model; the client sends dicts as they are."""
    return document


def new_api_client(kubeconfig: Path | None, context: str) -> client.ApiClient:
    path = str(kubeconfig) if kubeconfig else None
    return cast(client.ApiClient, config.new_client_from_config(config_file=path, context=context))  # type: ignore[no-untyped-call]


def current_context(kubeconfig: Path) -> str:
    _contexts, current = config.list_kube_config_contexts(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return str(current["name"])


def deployment_manifest(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod_labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{"name": "main", "image": "registry.example.com/demo:1"}],
                },
            },
        },
    }


def wait_ready(cluster: Cluster, namespace: str, selector: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until `count` pods of the selector count as ready (a setup step, so polling is fine here)."""
    core = client.CoreV1Api(cluster.api)
    deadline = time.monotonic() + timeout_s
    ready = 0
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        states = [pod_state(item) for item in body(pods)["items"]]
        ready = sum(1 for state in states if state.counts_ready)
        if ready >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {ready} of {count} pods of {selector} in {namespace} became ready in {timeout_s} s")


@pytest.fixture
def deploy(cluster: Cluster) -> Callable[..., None]:
    """Create a Deployment and wait until its pods are ready."""
    apps = client.AppsV1Api(cluster.api)

    def create(namespace: str, name: str, replicas: int, labels: dict[str, str] | None = None) -> None:
        apps.create_namespaced_deployment(namespace, manifest(deployment_manifest(name, replicas, labels)))
        wait_ready(cluster, namespace, f"app={name}", replicas)

    return create


@pytest.fixture
def make_target(cluster: Cluster) -> Iterator[Callable[..., KubernetesTarget]]:
    """Build KubernetesTargets on the session's cluster; close each after the test."""
    targets: list[KubernetesTarget] = []

    def build(namespace: str, **settings: Any) -> KubernetesTarget:
        options = KubernetesOptions(
            context=settings.pop("context", cluster.context),
            kubeconfig=settings.pop("kubeconfig", cluster.kubeconfig),
            namespace=namespace,
            selector=settings.pop("selector", "app=web"),
            workload=settings.pop("workload", "deployment/web"),
            allowed_contexts=settings.pop("allowed_contexts", (cluster.context,)),
            allowed_namespaces=settings.pop("allowed_namespaces", (namespace,)),
            **settings,
        )
        target = KubernetesTarget.from_options(options)
        targets.append(target)
        target.start()
        return target

    yield build
    for target in targets:
        target.close()
