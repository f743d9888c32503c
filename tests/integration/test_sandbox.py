"""The sandbox runs real replicas behind HAProxy, scraped by Prometheus, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sandbox.environment import Sandbox
from tests.conftest import requires_sandbox

pytestmark = requires_sandbox


def fetch_replica(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return str(response.headers["X-Replica"])


def test_traffic_reaches_every_replica(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(replicas=3)

    served_by = {fetch_replica(f"{sandbox.lb_url}/work") for _ in range(30)}

    assert served_by == {"replica-0", "replica-1", "replica-2"}


def test_prometheus_reports_every_target_up(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(replicas=2)

    samples = sandbox.query_prometheus("up")

    up = {(sample["metric"]["job"], sample["metric"].get("replica", "")): sample["value"][1] for sample in samples}
    assert up == {("replicas", "replica-0"): "1", ("replicas", "replica-1"): "1", ("haproxy", ""): "1"}


def test_replicas_live_on_their_own_addresses_in_the_namespace(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(replicas=2)

    listening = subprocess.run(
        ["ip", "netns", "exec", sandbox.config.netns, "ss", "-ltnH"], capture_output=True, text=True, check=True
    ).stdout

    assert "127.0.1.1:8080" in listening
    assert "127.0.1.2:8080" in listening


def test_down_leaves_no_process_namespace_or_state(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(replicas=2)
    pids = list(sandbox.replica_pids().values())

    sandbox.down()

    assert not sandbox._own_processes()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert sandbox.config.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not sandbox.state_dir.exists()


def test_up_after_a_crashed_run_cleans_up_first(make_sandbox: Callable[..., Sandbox]) -> None:
    first = make_sandbox(replicas=1)
    # A crashed harness leaves supervisord and its children running: `up` must replace them.
    old_pids = first._own_processes()
    assert old_pids

    second = make_sandbox(
        name=first.config.name, replicas=1, lb_port=first.config.lb_port, prometheus_port=first.config.prometheus_port
    )

    assert fetch_replica(f"{second.lb_url}/work") == "replica-0"
    assert not any(Path(f"/proc/{pid}").exists() for pid in old_pids)
