"""Network partition: iptables rules in the target's namespace drop packets between chosen addresses.

Two modes:

- `isolate`: the chosen instances are cut off from the load balancer (and from monitoring,
  which in the sandbox connects from the same address), so health checks and traffic fail;
- `split`: the chosen instances form group B, the others group A, and packets between the
  two groups are dropped while the load balancer still reaches both.

`direction` selects which packets are dropped: `inbound` (towards the chosen instances),
`outbound` (from them) or `both`. Either one breaks a TCP connection, because the handshake
needs both. Every rule carries the comment `stormgate:<run id>:<fault id>`, and revert
deletes the rules with that comment and checks that none is left.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal, cast

from pydantic import BaseModel, Field

from chaos import netfilter
from chaos.faults.base import (
    Fault,
    FaultPlan,
    FaultRevertFailed,
    InjectResult,
    RevertResult,
    SelectionSpec,
    VerifyResult,
    check_ids,
)
from chaos.netfilter import ConnectionCheck
from chaos.safety import eligible_instances, select_instances
from chaos.targets.base import NetworkTarget, Target
from stormgate.errors import FaultNotEffective, UsageError

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.1


class PartitionSpec(SelectionSpec):
    """Scenario settings of a network partition. In a split, `count` or `share` sets the size of group B."""

    kind: Literal["partition"] = "partition"
    mode: Literal["isolate", "split"] = "isolate"
    direction: Literal["both", "inbound", "outbound"] = "both"
    duration_s: float | None = Field(default=None, gt=0.0)
    """How long the partition lasts; None keeps it until revert."""
    verify_timeout_s: float = Field(default=10.0, gt=0.0)
    """Time the load balancer has to mark isolated instances DOWN before the fault counts as not effective."""


class PartitionRule(BaseModel):
    """One iptables rule: the chain and the match, without the comment and target that every rule gets."""

    chain: Literal["INPUT"] = "INPUT"
    match: list[str]
    action: Literal["DROP"] = "DROP"


class PartitionPlan(FaultPlan):
    """Exactly which rules the partition adds and how it proves that they work."""

    kind: Literal["partition"] = "partition"
    mode: Literal["isolate", "split"]
    direction: Literal["both", "inbound", "outbound"]
    network_namespace: str
    comment: str
    """iptables comment on every rule of this fault: `stormgate:<run id>:<fault id>`."""
    rules: list[PartitionRule]
    other_group: list[str] = Field(default_factory=list)
    """Instances on the other side of a split (group A); empty when isolating."""
    checks: list[ConnectionCheck]
    expect_down: list[str] = Field(default_factory=list)
    """Instances that the load balancer must mark DOWN for the fault to count as effective."""
    verify_timeout_s: float = 10.0

    def describe(self) -> str:
        lines = [super().describe() + f", mode {self.mode}, direction {self.direction}, in {self.network_namespace}"]
        lines += [f"  iptables -I {rule.chain} {' '.join(rule.match)} -j {rule.action}" for rule in self.rules]
        lines += [f"  check: {check.describe()}" for check in self.checks]
        return "\n".join(lines)


class PartitionInjectResult(InjectResult):
    rules: list[str] = Field(default_factory=list)
    """Rules added, in `iptables -S` form."""


def network_target(target: Target) -> NetworkTarget:
    """Return the target as a NetworkTarget, or raise UsageError when it has no network namespace."""
    if not hasattr(target, "network_namespace") or not hasattr(target, "lb_source_address"):
        raise UsageError(
            f"Target {target.name} has no network namespace, so a partition cannot act on it; "
            "use a sandbox target or remove the partition fault"
        )
    return cast(NetworkTarget, target)


class Partition(Fault[PartitionPlan]):
    """Drop packets between chosen instances and the load balancer, or between two groups of instances."""

    kind = "partition"
    plan_model = PartitionPlan

    def __init__(self, spec: PartitionSpec) -> None:
        super().__init__()
        self.spec = spec
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ----- plan -----

    def plan(self, target: Target, *, fault_id: str, seed: int, run_id: str = "") -> PartitionPlan:
        check_ids(fault_id=fault_id, run_id=run_id)
        network = network_target(target)
        candidates = eligible_instances(target)
        wanted = self.spec.checked_count(available=len(candidates), fault=f"partition on {target.name}")
        chosen = select_instances(candidates, wanted, selection=self.spec.selection, seed=seed)
        chosen_names = {instance.name for instance in chosen}
        others = [
            instance for instance in sorted(candidates, key=lambda i: i.name) if instance.name not in chosen_names
        ]
        missing = [instance.name for instance in candidates if not instance.host or not instance.port]
        if missing:
            raise UsageError(f"Target {target.name} reports no address for {', '.join(missing)}; cannot partition")
        if self.spec.mode == "split" and not others:
            raise UsageError(f"A split of {target.name} needs instances on both sides; lower count or share")

        lb = network.lb_source_address
        inbound = self.spec.direction in ("both", "inbound")
        outbound = self.spec.direction in ("both", "outbound")
        rules: list[PartitionRule] = []
        checks: list[ConnectionCheck] = []
        if self.spec.mode == "isolate":
            for instance in chosen:
                port = str(instance.port)
                if inbound:
                    rules.append(PartitionRule(match=["-s", lb, "-d", instance.host, "-p", "tcp", "--dport", port]))
                if outbound:
                    rules.append(PartitionRule(match=["-s", instance.host, "-d", lb, "-p", "tcp", "--sport", port]))
                checks.append(
                    ConnectionCheck(source=lb, host=instance.host, port=instance.port, expect_connected=False)
                )
            if others:
                # A control path that must still connect proves that the probe itself works.
                control = others[0]
                checks.append(ConnectionCheck(source=lb, host=control.host, port=control.port, expect_connected=True))
        else:
            for member in chosen:
                for other in others:
                    if inbound:
                        rules.append(PartitionRule(match=["-s", other.host, "-d", member.host]))
                    if outbound:
                        rules.append(PartitionRule(match=["-s", member.host, "-d", other.host]))
                checks.append(
                    ConnectionCheck(source=others[0].host, host=member.host, port=member.port, expect_connected=False)
                )
                checks.append(ConnectionCheck(source=lb, host=member.host, port=member.port, expect_connected=True))

        return PartitionPlan(
            fault_id=fault_id,
            run_id=run_id,
            target=target.name,
            seed=seed,
            instances=chosen,
            duration_s=self.spec.duration_s,
            mode=self.spec.mode,
            direction=self.spec.direction,
            network_namespace=network.network_namespace,
            comment=netfilter.rule_comment(run_id=run_id, fault_id=fault_id),
            rules=rules,
            other_group=[instance.name for instance in others] if self.spec.mode == "split" else [],
            checks=checks,
            expect_down=sorted(chosen_names) if self.spec.mode == "isolate" else [],
            verify_timeout_s=self.spec.verify_timeout_s,
        )

    # ----- inject -----

    def inject(self, target: Target, plan: PartitionPlan) -> PartitionInjectResult:
        added = []
        self._ended.clear()
        for rule in plan.rules:
            added.append(
                netfilter.insert_rule(
                    plan.network_namespace, rule.chain, rule.match, comment=plan.comment, action=rule.action
                )
            )
        logger.info(
            "Run %s: partition %s added %d iptables rules in %s.",
            plan.run_id,
            plan.fault_id,
            len(added),
            plan.network_namespace,
        )
        if plan.duration_s is not None:
            duration_s = plan.duration_s
            self._thread = self._start_background(plan.fault_id, lambda: self._expire(plan, duration_s))
        return PartitionInjectResult(
            fault_id=plan.fault_id,
            kind=plan.kind,
            touched=[instance.name for instance in plan.instances],
            rules=added,
        )

    def _expire(self, plan: PartitionPlan, duration_s: float) -> None:
        if self._stop.wait(duration_s):
            return
        removed = self._remove_rules(plan)
        logger.info("Run %s: partition %s ended after %g s.", plan.run_id, plan.fault_id, duration_s)
        self._record("fault.expire", fault_id=plan.fault_id, removed_rules=len(removed))

    # ----- verify -----

    def verify(self, target: Target, plan: PartitionPlan) -> VerifyResult:
        """Raise FaultNotEffective unless the rules are in place, the probes fail and the load balancer reports DOWN."""
        present = netfilter.rules_with_comment(plan.network_namespace, plan.comment)
        if len(present) != len(plan.rules):
            raise FaultNotEffective(
                f"Partition {plan.fault_id} planned {len(plan.rules)} iptables rules but {len(present)} with comment "
                f"{plan.comment} are in namespace {plan.network_namespace}; another process changed the rules"
            )
        evidence = [f"{len(present)} iptables rules with comment {plan.comment}"]

        outcomes = netfilter.try_connections(plan.network_namespace, plan.checks)
        wrong = [
            check.describe()
            for check, connected in zip(plan.checks, outcomes, strict=True)
            if connected != check.expect_connected
        ]
        if wrong:
            raise FaultNotEffective(
                f"Partition {plan.fault_id} in {plan.network_namespace} is not in effect: expected "
                f"{'; '.join(wrong)}, but the probe saw the opposite"
            )
        evidence += [f"probe: {check.describe()}" for check in plan.checks]

        if plan.expect_down:
            evidence += self._wait_for_down(network_target(target), plan)
        return VerifyResult(fault_id=plan.fault_id, kind=plan.kind, evidence=evidence)

    @staticmethod
    def _wait_for_down(target: NetworkTarget, plan: PartitionPlan) -> list[str]:
        deadline = time.monotonic() + plan.verify_timeout_s
        status: dict[str, str] = {}
        while True:
            status = target.backend_status()
            up = [name for name in plan.expect_down if not status.get(name, "").startswith("DOWN")]
            if not up:
                return [f"{name} {status[name]} in the load balancer" for name in plan.expect_down]
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        states = ", ".join(f"{name} {status.get(name, 'missing')}" for name in up)
        raise FaultNotEffective(
            f"Partition {plan.fault_id} is in place but the load balancer still reports {states} after "
            f"{plan.verify_timeout_s:g} s; its health checks do not use the blocked path "
            f"(source {target.lb_source_address})"
        )

    # ----- revert -----

    def revert(self, target: Target, plan: PartitionPlan) -> RevertResult:
        """Delete the rules with this fault's comment and check that none is left."""
        self._stop_background(self._thread, timeout_s=STOP_TIMEOUT_S)
        if not netfilter.namespace_exists(plan.network_namespace):
            # Deleting the namespace deleted its rules, so there is nothing left to undo.
            self._ended.set()
            logger.info("Run %s: namespace %s of %s is gone.", plan.run_id, plan.network_namespace, plan.fault_id)
            return RevertResult(fault_id=plan.fault_id, kind=plan.kind)
        removed = self._remove_rules(plan)
        left = netfilter.rules_with_comment(plan.network_namespace, plan.comment)
        if left:
            raise FaultRevertFailed(
                f"Revert of partition {plan.fault_id} left {len(left)} rules with comment {plan.comment} in "
                f"{plan.network_namespace}: {'; '.join(left)}. Run: stormgate cleanup"
            )
        self._ended.set()
        if removed:
            logger.info("Run %s: reverted partition %s in %s.", plan.run_id, plan.fault_id, plan.network_namespace)
        return RevertResult(fault_id=plan.fault_id, kind=plan.kind, undone=[f"deleted {rule}" for rule in removed])

    def _remove_rules(self, plan: PartitionPlan) -> list[str]:
        with self._lock:
            present = netfilter.rules_with_comment(plan.network_namespace, plan.comment)
            return netfilter.delete_rules(plan.network_namespace, present)
