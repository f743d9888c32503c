"""The ledger records before anything is touched, and FaultGuard reverts and marks it on every way out."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from chaos import guard as guard_module
from chaos.faults.instance_kill import InstanceKill, InstanceKillPlan, InstanceKillResult, InstanceKillSpec
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.targets.base import Instance, Target
from reports.timeline import Timeline
from stormgate.errors import SafetyViolation
from tests.unit.test_ledger_stateful import FakeTarget


def make_kill(target: FakeTarget, name: str = "replica-0") -> tuple[InstanceKill, InstanceKillPlan]:
    for index in range(4):
        target.add(f"replica-{index}")
    fault = InstanceKill(InstanceKillSpec(count=1, selection="oldest"))
    plan = fault.plan(target, fault_id="run/kill/1", seed=1, run_id="run")
    assert plan.instances[0].name == name
    return fault, plan


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl")


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_injection_is_on_disk_when_record_returns(ledger: Ledger) -> None:
    entry = ledger.record_injecting(fault_id="f1", run_id="r", target="sandbox/a", kind="partition", plan={"x": 1})

    lines = ledger.path.read_text().splitlines()

    assert len(lines) == 1
    assert entry.model_dump_json() == lines[0]


def test_open_entries_skip_reverted_and_other_targets(ledger: Ledger) -> None:
    first = ledger.record_injecting(fault_id="f1", run_id="r", target="sandbox/a", kind="partition", plan={})
    ledger.record_injecting(fault_id="f2", run_id="r", target="sandbox/a", kind="partition", plan={})
    ledger.record_injecting(fault_id="f3", run_id="r", target="sandbox/b", kind="partition", plan={})

    ledger.record_reverted(first)

    assert [entry.fault_id for entry in ledger.open_entries("sandbox/a")] == ["f2"]
    assert [entry.fault_id for entry in ledger.open_entries()] == ["f2", "f3"]


def test_torn_last_line_is_skipped(ledger: Ledger) -> None:
    ledger.record_injecting(fault_id="f1", run_id="r", target="sandbox/a", kind="partition", plan={})
    with ledger.path.open("a") as journal:
        journal.write('{"fault_id": "f2", "run_')

    assert [entry.fault_id for entry in ledger.open_entries()] == ["f1"]


class LedgerCheckingTarget(FakeTarget):
    """Counts the open ledger entries at the moment of each kill."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.open_at_kill: list[int] = []

    def kill(self, instance: Instance, sig: signal.Signals) -> None:
        self.open_at_kill.append(len(self.ledger.open_entries()))
        super().kill(instance, sig)


def test_guard_records_before_inject_and_reverts_at_exit(ledger: Ledger) -> None:
    target = LedgerCheckingTarget(ledger)
    fault, plan = make_kill(target)
    timeline = Timeline("run")

    with FaultGuard(ledger, target, fault, plan, run_id="run", timeline=timeline) as guard:
        assert not target.running["replica-0"]

    assert target.open_at_kill == [1]
    assert guard.reverted_by == "exit"
    assert target.running["replica-0"]
    assert ledger.open_entries() == []
    assert [event.kind for event in timeline.events] == [
        "fault.plan", "fault.kill", "fault.inject", "fault.verify", "fault.revert",
    ]  # fmt: skip


def test_revert_runs_after_in_process_sigterm(target: FakeTarget, ledger: Ledger, restore_signals: None) -> None:
    fault, plan = make_kill(target)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
        with FaultGuard(ledger, target, fault, plan, run_id="run") as guard:
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("the SIGTERM handler should have raised KeyboardInterrupt")

    assert guard.reverted_by == "SIGTERM"
    assert target.running["replica-0"]
    assert ledger.open_entries() == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigint_reaches_previous_handler_after_revert(
    target: FakeTarget, ledger: Ledger, restore_signals: None
) -> None:
    fault, plan = make_kill(target)
    calls: list[tuple[int, bool]] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        calls.append((signum, target.running["replica-0"]))

    signal.signal(signal.SIGINT, previous)
    with FaultGuard(ledger, target, fault, plan, run_id="run") as guard:
        os.kill(os.getpid(), signal.SIGINT)

    assert calls == [(signal.SIGINT, True)]
    assert guard.reverted_by == "SIGINT"
    assert signal.getsignal(signal.SIGINT) == previous


class SignalDuringInject(InstanceKill):
    """An instance kill that receives SIGTERM in the middle of its injection."""

    def __init__(self) -> None:
        super().__init__(InstanceKillSpec(count=1, selection="oldest"))
        self.order: list[str] = []

    def inject(self, target: Target, plan: InstanceKillPlan) -> InstanceKillResult:
        os.kill(os.getpid(), signal.SIGTERM)
        self.order.append("inject finished")
        return super().inject(target, plan)


def test_signal_during_inject_waits_for_inject_to_finish(
    target: FakeTarget, ledger: Ledger, restore_signals: None
) -> None:
    _, plan = make_kill(target)
    fault = SignalDuringInject()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    guard = FaultGuard(ledger, target, fault, plan, run_id="run")

    with pytest.raises(KeyboardInterrupt):
        with guard:
            fault.order.append("body ran")

    assert fault.order == ["inject finished"]
    assert guard.reverted_by == "SIGTERM"
    assert target.running["replica-0"]
    assert ledger.open_entries() == []


def test_atexit_hook_reverts_open_guards(target: FakeTarget, ledger: Ledger, restore_signals: None) -> None:
    fault, plan = make_kill(target)
    guard = FaultGuard(ledger, target, fault, plan, run_id="run")
    guard.__enter__()

    guard_module._revert_at_exit()

    assert guard.reverted_by == "interpreter exit"
    assert target.running["replica-0"]
    assert ledger.open_entries() == []
    assert signal.getsignal(signal.SIGTERM) != guard._on_signal


def test_dry_run_writes_no_ledger_and_touches_nothing(
    target: FakeTarget, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    fault, plan = make_kill(target)

    with FaultGuard(ledger, target, fault, plan, run_id="run", dry_run=True):
        pass

    assert all(target.running.values())
    assert not ledger.path.exists()
    assert "dry run, not injected: instance-kill run/kill/1" in capsys.readouterr().out


def test_guard_rejects_target_outside_allowlist(target: FakeTarget, ledger: Ledger) -> None:
    fault, plan = make_kill(target)
    target.name = "kubernetes/prod"

    with pytest.raises(SafetyViolation, match=r"kubernetes/prod is not in the allowed targets \(sandbox/\*\)"):
        with FaultGuard(ledger, target, fault, plan, run_id="run"):
            pass

    assert all(target.running.values())
    assert not ledger.path.exists()
