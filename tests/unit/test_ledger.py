"""The ledger records before anything is touched, and FaultGuard reverts and marks it on every way out."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from chaos import guard as guard_module
from chaos.faults.instance_kill import InstanceKill, InstanceKillPlan, InstanceKillResult, InstanceKillSpec
from chaos.guard import FaultGuard
from chaos.ledger import Ledger, LedgerEntry, process_start_ticks
from chaos.targets.base import Instance, Target
from reports.timeline import Timeline
from stormgate.cleanup import revert_leftovers, stray_rules
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


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process other than the test's own that runs until the test ends."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def write_killed_instance(
    ledger: Ledger, target: FakeTarget, *, owner_pid: int, owner_host: str = "", start_ticks: int | None = None
) -> None:
    """Kill replica-0 and append its open entry as if the owner process had written it."""
    fault, plan = make_kill(target)
    fault.inject(target, plan)
    current = ledger.record_injecting(
        fault_id=plan.fault_id, run_id="run", target=target.name, kind=plan.kind, plan=plan.model_dump()
    )
    ledger.path.unlink()
    ticks = process_start_ticks(owner_pid) if start_ticks is None else start_ticks
    foreign = LedgerEntry.model_validate(
        {
            **current.model_dump(),
            "owner_pid": owner_pid,
            "owner_host": owner_host or current.owner_host,
            "owner_start_time_ticks": ticks or 0,
        }
    )
    ledger.path.write_text(foreign.model_dump_json() + "\n", encoding="utf-8")
    assert not target.running["replica-0"]


def test_entry_records_current_process_as_owner(ledger: Ledger) -> None:
    entry = ledger.record_injecting(fault_id="f1", run_id="r", target="sandbox/a", kind="partition", plan={})

    assert entry.owner_pid == os.getpid()
    assert entry.owner_start_time_ticks == process_start_ticks(os.getpid())
    assert entry.owner.is_current_process()


def test_entry_without_owner_fields_is_readable(ledger: Ledger) -> None:
    ledger.path.write_text(
        '{"fault_id": "f1", "run_id": "r", "target": "sandbox/a", "kind": "partition", "plan": {}, '
        '"state": "injecting", "wall_time": 1.0}\n'
    )

    [entry] = ledger.open_entries()

    assert entry.owner_pid == 0
    assert not entry.owner.known


def test_cleanup_skips_entry_of_live_owner(
    target: FakeTarget, ledger: Ledger, live_process: subprocess.Popen[bytes]
) -> None:
    write_killed_instance(ledger, target, owner_pid=live_process.pid)

    report = revert_leftovers(ledger, target)

    assert report.reverted == []
    assert [item.reason for item in report.skipped] == [f"owned by running process {live_process.pid}"]
    assert f"skipped instance-kill run/kill/1 of run run: owned by running process {live_process.pid}" in report.lines()
    assert not target.running["replica-0"]
    assert [entry.fault_id for entry in ledger.open_entries()] == ["run/kill/1"]


def test_cleanup_reverts_entry_of_dead_owner(target: FakeTarget, ledger: Ledger) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    # Any nonzero start time: the pid has no /proc entry, or belongs to a newer process.
    write_killed_instance(ledger, target, owner_pid=finished.pid, start_ticks=1)

    report = revert_leftovers(ledger, target)

    assert report.reverted_ids == ["run/kill/1"]
    assert report.skipped == []
    assert target.running["replica-0"]
    assert ledger.open_entries() == []


def test_cleanup_reverts_entry_of_reused_pid(
    target: FakeTarget, ledger: Ledger, live_process: subprocess.Popen[bytes]
) -> None:
    ticks = process_start_ticks(live_process.pid)
    assert ticks is not None
    write_killed_instance(ledger, target, owner_pid=live_process.pid, start_ticks=ticks - 1)

    report = revert_leftovers(ledger, target)

    assert report.reverted_ids == ["run/kill/1"]
    assert report.skipped == []
    assert target.running["replica-0"]


def test_cleanup_skips_entry_of_other_host(target: FakeTarget, ledger: Ledger) -> None:
    write_killed_instance(ledger, target, owner_pid=os.getpid(), owner_host="other-host.invalid")

    report = revert_leftovers(ledger, target)

    assert report.reverted == []
    assert len(report.skipped) == 1
    assert "on host other-host.invalid" in report.skipped[0].reason
    assert not target.running["replica-0"]


@pytest.mark.parametrize("owner_host", ["", "other-host.invalid"], ids=["live-owner", "other-host"])
def test_forced_cleanup_reverts_skipped_entries(
    target: FakeTarget, ledger: Ledger, live_process: subprocess.Popen[bytes], owner_host: str
) -> None:
    write_killed_instance(ledger, target, owner_pid=live_process.pid, owner_host=owner_host)

    report = revert_leftovers(ledger, target, force=True)

    assert report.reverted_ids == ["run/kill/1"]
    assert report.skipped == []
    assert target.running["replica-0"]
    assert ledger.open_entries() == []


def test_stray_rules_keep_rules_of_skipped_faults() -> None:
    kept = "-A INPUT -s 10.0.0.2/32 -m comment --comment stormgate:live:live/partition/1 -j DROP"
    stray = "-A INPUT -s 10.0.0.3/32 -m comment --comment stormgate:dead:dead/partition/1 -j DROP"
    foreign = "-A INPUT -s 10.0.0.4/32 -m comment --comment other:live/partition/1 -j DROP"

    result = stray_rules([kept, stray, foreign], kept_fault_ids={"live/partition/1"})

    assert result == [stray]
