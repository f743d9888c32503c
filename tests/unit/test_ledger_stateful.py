"""Model test of the ledger: whatever sequence of injections, reverts and crashes, cleanup leaves no fault active.

The target is an in-memory fake whose instances stay down once killed, until a revert (or
the fake platform) starts them again. A crash is modelled by stopping an injection at one
of its steps and never running the rest, as SIGKILL would.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path
from typing import Literal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chaos.faults.instance_kill import InstanceKill, InstanceKillPlan, InstanceKillSpec, KillRound
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.targets.base import Instance, RecoveryProbe
from stormgate.cleanup import revert_leftovers

CrashPoint = Literal["before-ledger", "after-ledger", "after-inject", "after-revert", "no-crash"]


class FakeTarget:
    """Instances that stay down once killed; every start is counted per instance."""

    def __init__(self) -> None:
        self.name = "sandbox/fake"
        self.load_url = "http://127.0.0.1:9"
        self.prometheus_url = "http://127.0.0.1:9"
        self.running: dict[str, bool] = {}
        self.starts: dict[str, int] = {}
        """Starts by a revert; more than one for an instance means a fault was undone twice."""
        self.start_requests: list[str] = []

    def add(self, name: str) -> Instance:
        self.running[name] = True
        self.starts[name] = 0
        return Instance(name=name, pid=len(self.running))

    def instances(self) -> list[Instance]:
        return [Instance(name=name, pid=1) for name, up in sorted(self.running.items()) if up]

    def protected_instances(self) -> set[str]:
        return set()

    def kill(self, instance: Instance, sig: signal.Signals) -> None:
        self.running[instance.name] = False

    def instance_gone(self, instance: Instance) -> bool:
        return not self.running[instance.name]

    def recovery_probe(self, killed: list[Instance], *, expect_restart: bool = True) -> RecoveryProbe:
        raise NotImplementedError("the model never measures recovery")

    def ensure_running(self, instance_name: str) -> bool:
        self.start_requests.append(instance_name)
        if self.running[instance_name]:
            return False
        self.running[instance_name] = True
        self.starts[instance_name] += 1
        return True


class LedgerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-model-"))
        self.ledger = Ledger(self.folder / "ledger.jsonl")
        self.target = FakeTarget()
        self.count = 0
        self.killed_by_fault: set[str] = set()
        """Instances that an injection left down; the platform or a cleanup must bring them back."""

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(crash=st.sampled_from(["before-ledger", "after-ledger", "after-inject", "after-revert", "no-crash"]))
    def inject(self, crash: CrashPoint) -> None:
        self.count += 1
        instance = self.target.add(f"i{self.count}")
        fault = InstanceKill(InstanceKillSpec(count=1))
        plan = InstanceKillPlan(
            fault_id=f"run/f{self.count}",
            run_id="run",
            target=self.target.name,
            seed=0,
            instances=[instance],
            signal="SIGKILL",
            rounds=[KillRound(at_s=0.0, instances=[instance.name])],
            total_instances=2,
            max_concurrent=1,
        )
        if crash == "no-crash":
            with FaultGuard(self.ledger, self.target, fault, plan, run_id="run"):
                assert not self.target.running[instance.name]
            return
        if crash == "before-ledger":
            return
        self.ledger.record_injecting(
            fault_id=plan.fault_id, run_id="run", target=self.target.name, kind=plan.kind, plan=plan.model_dump()
        )
        if crash == "after-ledger":
            return
        fault.inject(self.target, plan)
        if crash == "after-inject":
            self.killed_by_fault.add(instance.name)
            return
        fault.revert(self.target, plan)

    @precondition(lambda self: bool(self.killed_by_fault))
    @rule(data=st.data())
    def platform_restarts_one(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.killed_by_fault)))
        self.target.running[name] = True
        self.killed_by_fault.discard(name)

    @rule()
    def cleanup(self) -> None:
        closed_before = {entry.fault_id for entry in self.ledger.entries() if entry.state == "reverted"}
        self.target.start_requests.clear()

        report = revert_leftovers(self.ledger, self.target)

        assert report.failed == []
        assert self.ledger.open_entries(self.target.name) == []
        assert all(self.target.running.values()), "cleanup left an instance down"
        requested_for_closed = {f"i{fault_id.rsplit('f', 1)[1]}" for fault_id in closed_before}
        assert not requested_for_closed & set(self.target.start_requests), "cleanup reverted a closed fault"
        self.killed_by_fault.clear()

    @invariant()
    def no_fault_undone_twice(self) -> None:
        assert all(starts <= 1 for starts in self.target.starts.values()), self.target.starts

    @invariant()
    def down_instances_are_open_faults(self) -> None:
        down = {name for name, up in self.target.running.items() if not up}
        open_names = {entry.plan["instances"][0]["name"] for entry in self.ledger.open_entries(self.target.name)}
        assert down == self.killed_by_fault
        assert down <= open_names


LedgerModel.TestCase.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
TestLedgerModel = LedgerModel.TestCase
