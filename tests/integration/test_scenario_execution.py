"""Whole scenarios against real sandboxes: the verdict follows what the platform really did."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from chaos.ledger import Ledger
from chaos.targets.sandbox import SandboxTarget
from reports.record import ScenarioResult
from sandbox.environment import Sandbox
from slo.model import Phase, Verdict
from slo.prometheus import PrometheusSource
from stormgate.cleanup import revert_leftovers
from stormgate.execution import RunContext, ScenarioExecution
from stormgate.scenario import ScenarioSpec, load_scenario
from tests.conftest import requires_sandbox

pytestmark = requires_sandbox

REPLICA_LOSS = Path(__file__).resolve().parents[2] / "scenarios" / "replica_loss.yaml"
SHORT_PHASES = {"warmup_s": 2, "baseline_s": 6, "chaos_s": 6, "steady_s": 6}


def short_replica_loss(**changes: object) -> ScenarioSpec:
    spec = load_scenario(REPLICA_LOSS)
    data = spec.model_dump()
    data["phases"] = SHORT_PHASES
    data["load"]["users"] = 20
    data["load"]["spawn_rate"] = 20
    data.update(changes)
    return ScenarioSpec.model_validate(data)


def execute(sandbox: Sandbox, spec: ScenarioSpec, tmp_path: Path) -> ScenarioResult:
    context = RunContext(run_id="test", seed=5, report_dir=tmp_path, ledger=Ledger(tmp_path / "ledger.jsonl"))
    prometheus = PrometheusSource(
        sandbox.prometheus_url,
        scrape_interval_s=sandbox.config.scrape_interval_s,
        coverage_selector='up{job="haproxy"}',
    )
    return ScenarioExecution(spec, SandboxTarget(sandbox), context, prometheus).run()


def test_healthy_sandbox_passes_with_evidence(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = make_sandbox(replicas=3)

    result = execute(sandbox, short_replica_loss(), tmp_path)

    assert result.verdict == Verdict.PASS, result.reasons
    judged_phases = {slo.phase for slo in result.slos}
    assert {Phase.BASELINE, Phase.CHAOS, Phase.STEADY} <= judged_phases
    assert {clock.name for clock in result.clocks} == {"platform", "client", "slo"}
    kinds = [event.kind for event in result.timeline]
    steps = ["fault.plan", "fault.inject", "fault.verify", "fault.revert"]
    assert all(step in kinds for step in steps), kinds
    assert [kinds.index(step) for step in steps] == sorted(kinds.index(step) for step in steps)
    assert not Ledger(tmp_path / "ledger.jsonl").open_entries()


def test_fragile_sandbox_fails_naming_the_breached_slo(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    # One replica that needs 8 s to start: killing it leaves no replica to serve.
    sandbox = make_sandbox(replicas=1, startup_delay_s=8.0)
    spec = short_replica_loss(fault={"kind": "instance-kill", "count": 1, "allow_all": True})

    result = execute(sandbox, spec, tmp_path)

    assert result.verdict == Verdict.FAIL
    reasons = "\n".join(result.reasons)
    assert "SLO 'availability-during-chaos' FAIL in phase chaos (source client)" in reasons
    assert "limit success ratio >= 0.95" in reasons


def test_unhealthy_baseline_injects_nothing(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = make_sandbox(replicas=2, error_rate=0.2)
    pids_before = sandbox.replica_pids()

    result = execute(sandbox, short_replica_loss(), tmp_path)

    assert result.verdict == Verdict.FAIL
    assert any(reason.startswith("Not healthy before chaos") for reason in result.reasons)
    assert sandbox.replica_pids() == pids_before
    assert not Ledger(tmp_path / "ledger.jsonl").entries()


def test_kill_switch_aborts_chaos(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = make_sandbox(replicas=1, startup_delay_s=8.0)
    spec = short_replica_loss(
        fault={"kind": "instance-kill", "count": 1, "allow_all": True},
        kill_switch={"min_success_ratio": 0.5, "window_s": 2},
    )

    result = execute(sandbox, spec, tmp_path)

    assert result.verdict == Verdict.FAIL
    assert any(reason.startswith("Kill switch: client success ratio") for reason in result.reasons)
    chaos_start, chaos_end = next((p.start, p.end) for p in result.phases if p.phase == "chaos")
    assert chaos_end - chaos_start < SHORT_PHASES["chaos_s"]


def test_fault_removed_by_cleanup_is_inconclusive(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sandbox = make_sandbox(replicas=3)
    spec = short_replica_loss(fault={"kind": "partition", "mode": "isolate", "count": 1, "duration_s": 5})
    ledger = Ledger(tmp_path / "ledger.jsonl")

    def force_cleanup_once_injected() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ledger.open_entries():
            time.sleep(0.2)
        time.sleep(1.0)
        revert_leftovers(ledger, SandboxTarget(sandbox), force=True)

    cleaner = threading.Thread(target=force_cleanup_once_injected, daemon=True)
    cleaner.start()
    result = execute(sandbox, spec, tmp_path)
    cleaner.join(timeout=10)

    assert result.verdict == Verdict.INCONCLUSIVE, result.reasons
    assert any("was reverted by another process" in reason for reason in result.reasons)
