"""A fault is reverted on every way out: normal end, exception, SIGINT, SIGTERM, and SIGKILL plus cleanup.

The signal cases run tests/integration/fault_driver.py as a child process that injects a
partition under a FaultGuard and blocks; the test signals it. After each case no stormgate
iptables rule is left in the namespace and every replica runs and is UP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.faults.partition import Partition, PartitionSpec
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.targets.sandbox import SandboxTarget
from reports.timeline import Timeline
from sandbox.environment import Sandbox
from stormgate.cleanup import revert_leftovers
from tests.conftest import requires_sandbox
from tests.integration.fault_driver import assert_sandbox_whole, start_sandbox, stormgate_rule_lines

pytestmark = requires_sandbox

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    started = start_sandbox(replicas=3)
    try:
        yield started
    finally:
        started.down()


def start_driver(sandbox: Sandbox, ledger: Path, run_id: str) -> subprocess.Popen[str]:
    """Start the driver and return once it has printed READY (partition injected and verified)."""
    child = subprocess.Popen(
        [
            sys.executable, "-m", "tests.integration.fault_driver",
            "--sandbox-name", sandbox.config.name, "--ledger", str(ledger), "--run-id", run_id,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert child.stdout is not None
    try:
        line = _read_line(child, READY_TIMEOUT_S)
    except BaseException:
        child.kill()
        child.wait()
        raise
    assert line == "READY", f"driver printed {line!r} instead of READY; exit code {child.poll()}"
    return child


def _read_line(child: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"driver printed nothing within {timeout_s:.0f} s")
    return child.stdout.readline().strip()


def test_revert_runs_at_normal_exit(sandbox: Sandbox, tmp_path: Path) -> None:
    target = SandboxTarget(sandbox)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    timeline = Timeline("normal")
    fault = Partition(PartitionSpec(count=1))
    plan = fault.plan(target, fault_id="normal/1", seed=2, run_id="normal")

    with FaultGuard(ledger, target, fault, plan, run_id="normal", timeline=timeline) as guard:
        assert len(stormgate_rule_lines(sandbox.config.netns)) == len(plan.rules)

    assert guard.reverted_by == "exit"
    assert ledger.open_entries() == []
    assert [event.kind for event in timeline.events] == ["fault.plan", "fault.inject", "fault.verify", "fault.revert"]
    assert all(event.run_id == "normal" for event in timeline.events)
    assert_sandbox_whole(sandbox)


def test_revert_runs_after_exception(sandbox: Sandbox, tmp_path: Path) -> None:
    target = SandboxTarget(sandbox)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    fault = Partition(PartitionSpec(count=1))
    plan = fault.plan(target, fault_id="exception/1", seed=3, run_id="exception")

    with pytest.raises(RuntimeError, match="scenario broke"):
        with FaultGuard(ledger, target, fault, plan, run_id="exception") as guard:
            raise RuntimeError("scenario broke")

    assert guard.reverted_by == "exception RuntimeError"
    assert ledger.open_entries() == []
    assert_sandbox_whole(sandbox)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_revert_runs_after_signal(sandbox: Sandbox, tmp_path: Path, sig: signal.Signals) -> None:
    ledger = tmp_path / "ledger.jsonl"
    child = start_driver(sandbox, ledger, run_id=f"signal-{sig.name.lower()}")
    assert stormgate_rule_lines(sandbox.config.netns) != []

    child.send_signal(sig)
    output, _ = child.communicate(timeout=EXIT_TIMEOUT_S)

    assert child.returncode == 130, output
    assert "INTERRUPTED" in output
    assert Ledger(ledger).open_entries() == []
    assert_sandbox_whole(sandbox)


def test_cleanup_command_reverts_after_sigkill(sandbox: Sandbox, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    child = start_driver(sandbox, ledger, run_id="sigkill")

    child.kill()
    child.communicate(timeout=EXIT_TIMEOUT_S)
    left = stormgate_rule_lines(sandbox.config.netns)
    assert left != [], "SIGKILL gave the driver no chance to revert, so its rules must still be there"
    assert [entry.fault_id for entry in Ledger(ledger).open_entries()] == ["sigkill/driver/1"]

    cleanup = subprocess.run(
        [
            sys.executable, "-m", "stormgate.cli", "cleanup",
            "--sandbox-name", sandbox.config.name, "--ledger", str(ledger),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S,
    )  # fmt: skip

    assert cleanup.returncode == 0, cleanup.stderr
    assert "reverted partition sigkill/driver/1 of run sigkill" in cleanup.stdout
    assert Ledger(ledger).open_entries() == []
    assert_sandbox_whole(sandbox)


def test_next_run_removes_rules_when_ledger_is_lost(sandbox: Sandbox, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    child = start_driver(sandbox, ledger, run_id="lost")
    child.kill()
    child.communicate(timeout=EXIT_TIMEOUT_S)
    ledger.unlink()

    report = revert_leftovers(Ledger(ledger), SandboxTarget(sandbox))

    assert report.reverted == []
    assert len(report.deleted_rules) == 2
    assert all("stormgate:lost:lost/driver/1" in rule for rule in report.deleted_rules)
    assert_sandbox_whole(sandbox)
