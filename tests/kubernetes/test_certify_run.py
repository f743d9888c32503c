"""A whole certification run with --target kubernetes: options, pod kill, watch-based recovery, run.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.kubernetes.conftest import Cluster

pytestmark = pytest.mark.kubernetes

REPO = Path(__file__).resolve().parents[2]

SCENARIO_MODULE = """
import pytest

from stormgate.scenario import ScenarioSpec

SPEC = ScenarioSpec.model_validate(
    {
        "name": "pod-loss-short",
        "load": {"users": 10, "spawn_rate": 10},
        "phases": {"warmup_s": 2, "baseline_s": 5, "chaos_s": 5, "steady_s": 4},
        "fault": {"kind": "pod-kill", "count": 1},
        "slos": [
            {"name": "availability", "kind": "availability", "phases": ["baseline", "chaos", "steady"],
             "min_success_ratio": 0.99},
        ],
        "recovery": {"platform_s": 20, "client_s": 20, "stability_s": 2},
    }
)


@pytest.mark.target("kubernetes")
@pytest.mark.scenario("pod-loss-short")
def test_pod_loss_short(certify):
    certify(SPEC)
"""


class Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@pytest.fixture
def loopback_service() -> Iterator[str]:
    """A stand-in for the workload's Service on 127.0.0.1: KWOK pods serve no traffic."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_run_certifies_pod_loss_on_cluster(
    cluster: Cluster,
    namespace: str,
    deploy: Callable[..., None],
    loopback_service: str,
    tmp_path: Path,
) -> None:
    deploy(namespace, "web", 3)
    (tmp_path / "test_pod_loss_short.py").write_text(SCENARIO_MODULE)
    report_dir = tmp_path / "report"
    options = [
        "--target", "kubernetes",
        "--kube-context", cluster.context,
        "--kube-allowed-context", cluster.context,
        "--kube-namespace", namespace,
        "--kube-selector", "app=web",
        "--kube-workload", "deployment/web",
        "--load-url", loopback_service,
        "--report-dir", str(report_dir),
        "--seed", "11",
    ]  # fmt: skip
    if cluster.kubeconfig is not None:
        options += ["--kubeconfig", str(cluster.kubeconfig)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "stormgate.plugin",
        "-p",
        "no:cacheprovider",
        "test_pod_loss_short.py",
    ]

    result = subprocess.run(
        command + options, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    record = json.loads((report_dir / "run.json").read_text())
    assert record["verdict"] == "pass"
    assert record["target"] == f"kubernetes/{cluster.context}/{namespace}"
    scenario = record["scenarios"][0]
    assert scenario["faults"][0]["plan"]["kind"] == "pod-kill"
    platform = next(clock for clock in scenario["clocks"] if clock["name"] == "platform")
    assert platform["verdict"] == "pass"
    if cluster.pod_ready_delay_s is not None:
        # The replacement pod turns Ready after KWOK's delay; scheduling and the watch add little.
        assert cluster.pod_ready_delay_s <= platform["measured_s"] <= cluster.pod_ready_delay_s + 3.0
