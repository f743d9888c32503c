"""Traffic flood through the load layer against a Kubernetes target's load URL, and the scale-out clock."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from chaos.faults.flood import TrafficFlood, TrafficFloodSpec
from chaos.targets.kubernetes import KubernetesTarget
from tests.kubernetes.conftest import Cluster

pytestmark = pytest.mark.kubernetes


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the signature is http.server's
        return


@pytest.fixture
def ingress_url() -> Iterator[str]:
    """A loopback HTTP server standing in for the Ingress: pod IPs of the test bed have no listener."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_flood_runs_and_times_scale_out(
    cluster: Cluster,
    namespace: str,
    deploy: Callable[..., None],
    make_target: Callable[..., KubernetesTarget],
    ingress_url: str,
    tmp_path: Path,
) -> None:
    deploy(namespace, "web", 2)
    target = make_target(namespace, load_url=ingress_url)
    fault = TrafficFlood(
        TrafficFloodSpec(duration_s=2.0, connections=4, threads=1, path="/", min_rps=50.0), workdir_root=tmp_path
    )
    plan = fault.plan(target, fault_id="flood-1", seed=1, run_id="run-flood")
    clock = target.scale_out_clock()

    fault.inject(target, plan)
    try:
        fault.verify(target, plan)
        # KWOK has no metrics server, so the test scales the Deployment the way the HPA controller
        # would (through the scale subresource) once the flood runs.
        client.AppsV1Api(cluster.api).patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 3}})
        assert fault.wait(30.0)
    finally:
        fault.revert(target, plan)

    assert fault.outcome is not None
    assert fault.outcome.achieved_rps >= 50.0
    assert clock.wait(30.0)
    assert clock.target_replicas == 3
    assert clock.scale_out_s is not None and clock.scale_out_s > 0
