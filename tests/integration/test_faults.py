"""Every sandbox fault takes effect, proves it, and reverts; a dry run and a rejected plan touch nothing."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos import netfilter
from chaos.faults import (
    FAULT_SPEC_ADAPTER,
    InstanceKill,
    InstanceKillSpec,
    Partition,
    PartitionSpec,
    TrafficFlood,
    TrafficFloodSpec,
    build_fault,
)
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.targets.sandbox import SandboxTarget
from reports.timeline import Timeline
from sandbox.environment import Sandbox
from stormgate.errors import FaultNotEffective, SafetyViolation
from tests.conftest import requires_sandbox
from tests.integration.fault_driver import assert_sandbox_whole, iptables_state, start_sandbox, stormgate_rule_lines

pytestmark = requires_sandbox

REPLICAS = 4


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    started = start_sandbox(replicas=REPLICAS)
    try:
        yield started
    finally:
        started.down()


@pytest.fixture
def target(sandbox: Sandbox) -> Iterator[SandboxTarget]:
    yield SandboxTarget(sandbox)
    assert_sandbox_whole(sandbox)


def test_isolated_replica_is_down_in_haproxy(target: SandboxTarget, tmp_path: Path) -> None:
    fault = Partition(PartitionSpec(count=1))
    plan = fault.plan(target, fault_id="isolate/1", seed=4, run_id="isolate")
    isolated = plan.instances[0].name

    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="isolate") as guard:
        status = target.backend_status()
        evidence = guard.verify_result.evidence if guard.verify_result else []

    assert status[isolated].startswith("DOWN")
    assert all(state == "UP" for name, state in status.items() if name != isolated)
    assert any(item.startswith(f"{isolated} DOWN") for item in evidence), evidence
    assert guard.revert_result is not None
    assert len(guard.revert_result.undone) == len(plan.rules) == 2


def test_outbound_partition_also_cuts_health_checks(target: SandboxTarget, tmp_path: Path) -> None:
    fault = Partition(PartitionSpec(count=2, direction="outbound"))
    plan = fault.plan(target, fault_id="outbound/1", seed=5, run_id="outbound")

    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="outbound"):
        status = target.backend_status()

    assert len(plan.rules) == 2
    assert all("--sport" in rule.match for rule in plan.rules)
    assert sorted(name for name, state in status.items() if state.startswith("DOWN")) == plan.expect_down


def test_split_cuts_groups_apart_but_keeps_load_balancer(target: SandboxTarget, tmp_path: Path) -> None:
    fault = Partition(PartitionSpec(mode="split", count=2))
    plan = fault.plan(target, fault_id="split/1", seed=6, run_id="split")

    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="split"):
        status = target.backend_status()
        across = netfilter.try_connections(
            plan.network_namespace,
            [
                netfilter.ConnectionCheck(source=a.host, host=b.host, port=b.port, expect_connected=False)
                for a in target.instances() if a.name in plan.other_group
                for b in plan.instances
            ],
        )  # fmt: skip

    assert len(plan.rules) == 2 * 2 * 2
    assert across == [False] * 4
    assert all(state == "UP" for state in status.values())


def test_partition_ends_after_its_duration(target: SandboxTarget, tmp_path: Path) -> None:
    timeline = Timeline("expiry")
    fault = Partition(PartitionSpec(count=1, duration_s=1.5))
    plan = fault.plan(target, fault_id="expiry/1", seed=7, run_id="expiry")

    with FaultGuard(
        Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="expiry", timeline=timeline
    ) as guard:
        assert guard.active
        ended = guard.wait(30.0)
        rules_after_end = stormgate_rule_lines(target.network_namespace)

    assert ended
    assert not fault.active
    assert rules_after_end == []
    assert "fault.expire" in [event.kind for event in timeline.events]


def test_verify_fails_when_rules_are_removed(target: SandboxTarget, tmp_path: Path) -> None:
    fault = Partition(PartitionSpec(count=1))
    plan = fault.plan(target, fault_id="removed/1", seed=8, run_id="removed")

    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="removed", verify=False) as guard:
        netfilter.delete_rules(
            plan.network_namespace, netfilter.rules_with_comment(plan.network_namespace, plan.comment)
        )
        with pytest.raises(FaultNotEffective, match="planned 2 iptables rules but 0"):
            guard.verify()


def test_repeated_kill_records_every_round(target: SandboxTarget, sandbox: Sandbox, tmp_path: Path) -> None:
    timeline = Timeline("repeat")
    fault = InstanceKill(InstanceKillSpec(count=1, interval_s=1.5, duration_s=4.0))
    plan = fault.plan(target, fault_id="repeat/1", seed=9, run_id="repeat")

    with FaultGuard(
        Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="repeat", timeline=timeline
    ) as guard:
        ended = guard.wait(60.0)

    assert ended
    assert len(plan.rounds) == 3
    assert [kill.round for kill in fault.kills] == [0, 1, 2]
    assert [kill.instance for kill in fault.kills] == [kill_round.instances[0] for kill_round in plan.rounds]
    assert all(kill.outcome == "killed" for kill in fault.kills)
    assert len([event for event in timeline.events if event.kind == "fault.kill"]) == 3


def test_kill_by_share_picks_oldest(target: SandboxTarget, tmp_path: Path) -> None:
    fault = InstanceKill(InstanceKillSpec(share=0.5, selection="oldest", signal="SIGTERM"))
    instances = sorted(target.instances(), key=lambda instance: instance.started_at)

    plan = fault.plan(target, fault_id="oldest/1", seed=1, run_id="oldest")
    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="oldest"):
        pass

    assert [instance.name for instance in plan.instances] == [instance.name for instance in instances[:2]]
    assert [kill.signal for kill in fault.kills] == ["SIGTERM", "SIGTERM"]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "instance-kill", "count": 1},
        {"kind": "instance-kill", "count": 1, "interval_s": 1, "duration_s": 5},
        {"kind": "partition", "count": 1},
        {"kind": "partition", "mode": "split", "count": 2, "direction": "inbound"},
        {"kind": "flood", "duration_s": 5, "min_rps": 100},
    ],
    ids=["kill", "repeated-kill", "isolate", "split", "flood"],
)
def test_dry_run_touches_nothing(
    target: SandboxTarget, sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, object]
) -> None:
    fault = build_fault(FAULT_SPEC_ADAPTER.validate_python(spec))
    ledger = Ledger(tmp_path / "ledger.jsonl")
    rules_before = iptables_state(sandbox.config.netns)
    pids_before = sandbox.replica_pids()

    plan = fault.plan(target, fault_id="dry/1", seed=10, run_id="dry")
    with FaultGuard(ledger, target, fault, plan, run_id="dry", dry_run=True) as guard:
        assert guard.wait(0.0)
    time.sleep(0.5)

    assert iptables_state(sandbox.config.netns) == rules_before
    assert sandbox.replica_pids() == pids_before
    assert not ledger.path.exists()
    assert f"dry run, not injected: {spec['kind']} dry/1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (PartitionSpec(count=3), "more than the cap of 50% (2 instances)"),
        (InstanceKillSpec(share=0.75), "more than the cap of 50% (2 instances)"),
        (PartitionSpec(count=4), "would hit all 4 instances; set allow_all: true"),
    ],
    ids=["partition-count", "kill-share", "all"],
)
def test_cap_rejects_larger_plans(
    target: SandboxTarget, sandbox: Sandbox, spec: InstanceKillSpec | PartitionSpec, message: str
) -> None:
    rules_before = iptables_state(sandbox.config.netns)

    with pytest.raises(SafetyViolation, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_fault(spec).plan(target, fault_id="cap/1", seed=11, run_id="cap")

    assert iptables_state(sandbox.config.netns) == rules_before


@pytest.mark.skipif(importlib.util.find_spec("loadtests.flood") is None, reason="loadtests.flood is not written yet")
def test_flood_reaches_required_rate(target: SandboxTarget, tmp_path: Path) -> None:
    fault = TrafficFlood(TrafficFloodSpec(duration_s=3, connections=20, threads=1, min_rps=50), workdir_root=tmp_path)
    plan = fault.plan(target, fault_id="flood/1", seed=12, run_id="flood")

    with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="flood") as guard:
        ended = guard.wait(60.0)

    assert ended
    assert fault.outcome is not None
    assert fault.outcome.achieved_rps >= 50


@pytest.mark.skipif(importlib.util.find_spec("loadtests.flood") is None, reason="loadtests.flood is not written yet")
def test_flood_below_required_rate_is_not_effective(target: SandboxTarget, tmp_path: Path) -> None:
    fault = TrafficFlood(TrafficFloodSpec(duration_s=2, connections=1, threads=1, min_rps=1e9), workdir_root=tmp_path)
    plan = fault.plan(target, fault_id="flood/2", seed=13, run_id="flood")

    with pytest.raises(FaultNotEffective, match="below the required"):
        with FaultGuard(Ledger(tmp_path / "ledger.jsonl"), target, fault, plan, run_id="flood") as guard:
            guard.wait(60.0)
