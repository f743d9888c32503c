"""Benchmark: a pod kill and its recovery on a Deployment of 1,000 pods over 100 simulated nodes.

    .venv/bin/python benchmarks/kubernetes_scale.py [--pods 1000] [--nodes 100] [--share 0.1]

It starts the local control plane of tests/kubernetes/controlplane.py, where KWOK simulates the
nodes and pods become Ready `--ready-delay` seconds after they start. Then it creates the
Deployment, kills a share of its pods with the pod-kill fault and waits for the platform clock.

Reported:
- recovery: from the first delete request to the watch event after which every desired pod
  was ready again (the platform clock);
- lag behind the ideal: from the moment the last replacement could become Ready (the scheduler's
  Scheduled eventTime plus KWOK's readiness delay, both from this machine's clock) to the clock's
  stop. It covers KWOK's own handling of the Ready stage, which falls behind in a burst, and the
  watch's delivery;
- detection latency: from the moment a separate minimal watcher process received the last
  replacement's Ready to the clock's stop. This is the harness's own share: its watch, its cache
  and its probe;
- API requests that the harness sent from planning to recovery, counted in its ApiClient, by
  HTTP method. The benchmark's own setup requests are made through another client.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos.faults.pod_kill import PodKill, PodKillSpec
from chaos.targets.kube_watch import parse_time, pod_state
from chaos.targets.kubernetes import KubernetesTarget
from tests.kubernetes.controlplane import ControlPlane

NAMESPACE = "bench"

REFERENCE_WATCHER = """
import json, sys, time
from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

core = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1]))
listing = json.loads(core.list_namespaced_pod(sys.argv[2], _preload_content=False).data)
def ready(pod):
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
seen = {pod["metadata"]["uid"] for pod in listing["items"] if ready(pod)}
response = core.list_namespaced_pod(
    sys.argv[2], watch=True, resource_version=listing["metadata"]["resourceVersion"],
    timeout_seconds=600, _preload_content=False,
)
print("watching", flush=True)
for line in iter_resp_lines(response):
    if not line:
        continue
    event = json.loads(line)
    pod = event["object"]
    if event["type"] != "DELETED" and ready(pod) and pod["metadata"]["uid"] not in seen:
        seen.add(pod["metadata"]["uid"])
        print(pod["metadata"]["name"], f"{time.time():.3f}", flush=True)
"""
"""A minimal watcher in its own process: prints each pod's name and the wall time its Ready arrived."""


def _deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "registry.example.com/demo:1"}]},
            },
        },
    }


def _scheduled_times(api: client.ApiClient) -> dict[str, float]:
    """Return the Scheduled eventTime of every pod in the namespace, by pod name."""
    times: dict[str, float] = {}
    token = ""
    while True:
        response: Any = client.EventsV1Api(api).list_namespaced_event(
            NAMESPACE, limit=500, _continue=token or None, _preload_content=False
        )
        page = json.loads(response.data)
        for event in page["items"]:
            if event.get("reason") == "Scheduled" and event.get("eventTime"):
                times[event["regarding"]["name"]] = parse_time(event["eventTime"])
        token = page["metadata"].get("continue", "")
        if not token:
            return times


def run(pods: int, nodes: int, share: float, ready_delay_s: float) -> dict[str, Any]:
    with ControlPlane(nodes=nodes, pod_ready_delay=ready_delay_s, pods_per_node=max(110, 2 * pods // nodes)) as plane:
        admin: Any = config.new_client_from_config(config_file=str(plane.kubeconfig))  # type: ignore[no-untyped-call]
        _contexts, current = config.list_kube_config_contexts(config_file=str(plane.kubeconfig))  # type: ignore[no-untyped-call]
        context = current["name"]
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": NAMESPACE}})  # type: ignore[arg-type]
        target = KubernetesTarget.from_options(
            context=context,
            kubeconfig=plane.kubeconfig,
            namespace=NAMESPACE,
            selector="app=web",
            workload="deployment/web",
            allowed_contexts=(context,),
            allowed_namespaces=(NAMESPACE,),
        )
        target.start()

        started = time.monotonic()
        client.AppsV1Api(admin).create_namespaced_deployment(NAMESPACE, _deployment(pods))  # type: ignore[arg-type]
        # A setup step, so it samples the cache twice a second instead of parsing 1,000 pods per event.
        while sum(1 for item in target.pods.objects() if pod_state(item).counts_ready) < pods:
            if time.monotonic() - started > 600.0:
                raise SystemExit(f"the Deployment did not reach {pods} ready pods within 600 s")
            time.sleep(0.5)
        rollout_s = time.monotonic() - started

        reference = subprocess.Popen(
            [sys.executable, "-c", REFERENCE_WATCHER, str(plane.kubeconfig), NAMESPACE],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reference.stdout is not None
        if reference.stdout.readline().strip() != "watching":
            raise SystemExit("the reference watcher did not start")
        reference_ready: dict[str, float] = {}

        def read_reference() -> None:
            assert reference.stdout is not None
            for line in reference.stdout:
                name, wall = line.split()
                reference_ready[name] = float(wall)

        reader = threading.Thread(target=read_reference, daemon=True)
        reader.start()

        requests_before = dict(target.connection.api_client.requests)
        events_before = target.pods.events
        fault = PodKill(PodKillSpec(share=share, max_share=share))
        plan_started = time.monotonic()
        plan = fault.plan(target, fault_id="bench-kill", seed=1, run_id="bench")
        plan_s = time.monotonic() - plan_started
        names = {pod.name for pod in plan.pods}
        probe = target.recovery_probe([instance for instance in target.instances() if instance.name in names])
        before = {state.name for state in target.pod_states()}
        result = fault.inject(target, plan)
        inject_s = time.monotonic() - probe.started.monotonic
        fault.verify(target, plan)
        verify_s = time.monotonic() - probe.started.monotonic
        if not probe.wait(300.0):
            raise SystemExit(f"no recovery within 300 s: {probe.describe()}")
        requests_after = dict(target.connection.api_client.requests)
        assert probe.recovered is not None

        time.sleep(1.0)
        reference.terminate()
        reference.wait(10)
        reader.join(5)
        scheduled = _scheduled_times(admin)
        replacements = [state.name for state in target.pod_states() if state.name not in before]
        latest_ready = max(scheduled[name] for name in replacements if name in scheduled) + ready_delay_s
        harness_requests = {
            method: requests_after.get(method, 0) - requests_before.get(method, 0) for method in requests_after
        }
        watch_events = target.pods.events - events_before
        target.close()
        admin.close()
        return {
            "pods": pods,
            "nodes": nodes,
            "killed": len(plan.pods),
            "replacements_seen": len(replacements),
            "ready_delay_s": ready_delay_s,
            "rollout_s": round(rollout_s, 3),
            "plan_s": round(plan_s, 3),
            "inject_s": round(inject_s, 3),
            "verify_s": round(verify_s, 3),
            "recovery_s": round(probe.recovered.wall - result.started, 3),
            "lag_behind_ideal_ms": round((probe.recovered.wall - latest_ready) * 1000.0, 1),
            "detection_latency_ms": round(
                (probe.recovered.wall - max(reference_ready[name] for name in replacements)) * 1000.0, 1
            ),
            "harness_requests": {method: count for method, count in harness_requests.items() if count},
            "harness_requests_total": sum(harness_requests.values()),
            "watch_events": watch_events,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "kubernetes": plane.kube_version,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=1000, help="replicas of the Deployment (default 1000)")
    parser.add_argument("--nodes", type=int, default=100, help="simulated nodes (default 100)")
    parser.add_argument("--share", type=float, default=0.1, help="share of the pods to kill (default 0.1)")
    parser.add_argument("--ready-delay", type=float, default=2.0, help="KWOK's readiness delay in s (default 2.0)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(run(arguments.pods, arguments.nodes, arguments.share, arguments.ready_delay), indent=2))


if __name__ == "__main__":
    main()
