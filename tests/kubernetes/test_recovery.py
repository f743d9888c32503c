"""Pod kill and the platform recovery clock, against real controllers and KWOK's readiness delay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from chaos.faults.pod_kill import PodKill, PodKillSpec
from chaos.targets.kube_watch import parse_time, pod_state
from chaos.targets.kubernetes import KubernetesTarget, PodInstance
from tests.kubernetes.conftest import Cluster, body

pytestmark = pytest.mark.kubernetes

logger = logging.getLogger(__name__)

CLOCK_TOLERANCE_S = 0.1
"""Allowed gap between the platform clock and scheduling plus KWOK's readiness delay."""


def _scheduled_at(cluster: Cluster, namespace: str, pod: str, timeout_s: float = 10.0) -> float:
    """Return the eventTime (microseconds, UTC epoch seconds) of the scheduler's Scheduled event of a pod."""
    events = client.EventsV1Api(cluster.api)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = events.list_namespaced_event(
            namespace, field_selector=f"regarding.name={pod}", _preload_content=False
        )
        for event in body(response)["items"]:
            if event.get("reason") == "Scheduled" and event.get("eventTime"):
                return parse_time(event["eventTime"])
        time.sleep(0.1)
    raise AssertionError(f"no Scheduled event for pod {pod} in {namespace} within {timeout_s} s")


def _raw_pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    response = client.CoreV1Api(cluster.api).list_namespaced_pod(
        namespace, label_selector=selector, _preload_content=False
    )
    items: list[dict[str, Any]] = body(response)["items"]
    return items


def test_deployment_replaces_killed_pods(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 4)
    target = make_target(namespace)
    fault = PodKill(PodKillSpec(count=2, selection="oldest"))
    plan = fault.plan(target, fault_id="kill-1", seed=7, run_id="run-1")
    killed = [instance for instance in target.instances() if instance.name in {pod.name for pod in plan.pods}]
    probe = target.recovery_probe(killed)

    fault.inject(target, plan)
    verified = fault.verify(target, plan)

    assert len(verified.evidence) == 2
    assert probe.wait(60.0), probe.describe()
    current = {state.uid for state in target.pod_states() if state.counts_ready}
    assert len(current) == 4
    assert not current & {pod.uid for pod in plan.pods}
    assert probe.recovered is not None and probe.recovered.iso.endswith("Z")


def test_recovery_clock_matches_schedule_and_delay(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    """Compare the clock with scheduling (the scheduler's Scheduled event) plus KWOK's readiness delay.

    The clock ends when this process receives the watch event of the replacement's Ready. The
    reference is the scheduler's own timestamp of binding the replacement, in microseconds,
    plus the delay KWOK waits before it sets Ready. The difference is KWOK's handling and the
    watch's delivery, which must stay within CLOCK_TOLERANCE_S.
    """
    delay_s = cluster.pod_ready_delay_s
    if delay_s is None:
        pytest.skip("a real cluster has no known readiness delay to compare with")
    deploy(namespace, "web", 3)
    target = make_target(namespace)
    fault = PodKill(PodKillSpec(count=1))
    plan = fault.plan(target, fault_id="kill-clock", seed=1, run_id="run-clock")
    before = {state.name for state in target.pod_states()}
    probe = target.recovery_probe([instance for instance in target.instances() if instance.name == plan.pods[0].name])

    result = fault.inject(target, plan)
    assert probe.wait(30.0), probe.describe()

    replacement = [state for state in target.pod_states() if state.name not in before]
    assert len(replacement) == 1
    scheduled_at = _scheduled_at(cluster, namespace, replacement[0].name)
    assert probe.recovered is not None
    measured_s = probe.recovered.wall - result.started
    expected_s = scheduled_at - result.started + delay_s
    logger.info("Platform clock %.3f s; scheduling plus readiness delay %.3f s.", measured_s, expected_s)
    assert measured_s >= expected_s - 0.01, f"clock {measured_s:.3f} s ended before scheduling + delay"
    assert measured_s - expected_s < CLOCK_TOLERANCE_S, f"clock {measured_s:.3f} s vs expected {expected_s:.3f} s"

    # The pod's own conditions are stored to the second, so they agree only to within a second.
    raw = next(
        item for item in _raw_pods(cluster, namespace, "app=web") if item["metadata"]["name"] == replacement[0].name
    )
    conditions = {item["type"]: parse_time(item["lastTransitionTime"]) for item in raw["status"]["conditions"]}
    assert abs(conditions["Ready"] - conditions["PodScheduled"] - delay_s) <= 1.0


def test_terminating_pod_not_counted_ready(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    core = client.CoreV1Api(cluster.api)
    victim = target.instances()[0]
    assert isinstance(victim, PodInstance)
    # A finalizer keeps the pod terminating for as long as the test needs, with Ready still True in its status.
    core.patch_namespaced_pod(victim.name, namespace, {"metadata": {"finalizers": ["stormgate.test/hold"]}})
    probe = target.recovery_probe([])

    target.delete_pod(victim.name, uid=victim.uid, grace_period_s=30)
    assert target.pods.wait_until(
        lambda pods: any(pod_state(pod).terminating for pod in pods if pod["metadata"]["uid"] == victim.uid), 10.0
    )

    state = next(state for state in target.pod_states() if state.uid == victim.uid)
    assert state.ready
    assert not state.counts_ready
    assert victim.name not in {instance.name for instance in target.instances()}
    assert probe.wait(30.0), probe.describe()
    ready_uids = {state.uid for state in target.pod_states() if state.counts_ready}
    assert victim.uid not in ready_uids
    assert len(ready_uids) == 2
    core.patch_namespaced_pod(victim.name, namespace, {"metadata": {"finalizers": None}})


def test_repeated_kill_respects_cap(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 4)
    target = make_target(namespace)
    fault = PodKill(PodKillSpec(count=1, interval_s=1.5, duration_s=4.0, max_share=0.25))
    plan = fault.plan(target, fault_id="kill-repeat", seed=3, run_id="run-repeat")

    fault.inject(target, plan)
    fault.verify(target, plan)
    assert fault.wait(30.0)

    rounds = sorted({record.round for record in fault.kills})
    assert rounds[0] == 0
    assert len(fault.kills) >= 2
    assert len({record.uid for record in fault.kills}) == len(fault.kills)
    fault.revert(target, plan)


def test_scale_out_clock_times_added_replicas(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    """Scale the Deployment as a HorizontalPodAutoscaler would; KWOK has no metrics for a real HPA."""
    deploy(namespace, "web", 2)
    target = make_target(namespace)
    clock = target.scale_out_clock()

    client.AppsV1Api(cluster.api).patch_namespaced_deployment_scale(
        namespace=namespace, name="web", body={"spec": {"replicas": 4}}
    )

    assert clock.wait(30.0)
    assert clock.target_replicas == 4
    assert clock.decision_s is not None and clock.scale_out_s is not None
    assert clock.scale_out_s > clock.decision_s
    assert sum(1 for state in target.pod_states() if state.counts_ready) >= 4


def test_probe_without_restart_counts_touched_pods(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)

    probe = target.recovery_probe(target.instances(), expect_restart=False)

    assert probe.poll(), probe.describe()
    assert probe.duration_s is not None and probe.duration_s < 5.0


def test_probe_waits_for_loss_without_killed_pods(
    cluster: Cluster, namespace: str, deploy: Callable[..., None], make_target: Callable[..., KubernetesTarget]
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace)

    probe = target.recovery_probe([])

    assert not probe.poll()
    assert "no loss seen yet" in probe.describe()
