"""The watch resumes after 410 Gone (etcd compaction) by listing again, without losing a recovery."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from chaos.targets.kube_recovery import WorkloadRecoveryProbe
from chaos.targets.kube_watch import Informer
from chaos.targets.kubernetes import KubernetesTarget, PodInstance
from tests.kubernetes.conftest import Cluster, wait_ready

pytestmark = pytest.mark.kubernetes


class GatedList:
    """A list call whose watch requests wait while the gate is closed, as during a network outage."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()
        self.watches = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            if not self.gate.is_set():
                self.blocked.set()
                self.gate.wait(60.0)
            self.watches += 1
        return self.call(*args, **kwargs)


def test_watch_resumes_after_compaction(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    plane = cluster.require_controlplane("it compacts etcd")
    deploy(namespace, "web", 3)
    target = make_target(namespace)
    core = client.CoreV1Api(target.connection.api_client)
    gated = GatedList(core.list_namespaced_pod)
    # Watch requests of one second, so the informer soon reopens its watch and meets the closed gate.
    pods = Informer("gated pods", gated, watch_timeout_s=1, namespace=namespace, label_selector="app=web")
    pods.start()
    try:
        victim = target.instances()[0]
        assert isinstance(victim, PodInstance)
        probe = WorkloadRecoveryProbe(pods=pods, workload=target.workload, killed_uids={victim.uid}, desired_fallback=3)

        gated.gate.clear()
        assert gated.blocked.wait(10.0)
        target.delete_pod(victim.name, uid=victim.uid, grace_period_s=0)
        wait_ready(cluster, namespace, "app=web", 3)
        assert not probe.poll()
        plane.compact_etcd()
        gated.gate.set()

        assert probe.wait(30.0), probe.describe()
        assert pods.relists >= 1
        assert victim.uid not in {pod["metadata"]["uid"] for pod in pods.objects()}
        # The informer keeps following events after the re-list.
        client.AppsV1Api(cluster.api).patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 4}})
        assert pods.wait_until(lambda items: len(items) == 4, 30.0)
    finally:
        pods.stop()


def test_informer_stops_promptly(
    cluster: Cluster, namespace: str, make_target: Callable[..., KubernetesTarget]
) -> None:
    target = make_target(namespace)
    started = time.monotonic()
    target.close()
    assert time.monotonic() - started < 5.0
