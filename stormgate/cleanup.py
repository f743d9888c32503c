"""Reverting faults that an earlier, crashed run left behind.

Two sources, so that a lost or damaged ledger still leaves nothing active:

1. the ledger: every injection without a "reverted" mark is reverted from its stored plan
   and then marked;
2. marks on what faults touch: every iptables rule in the target's network namespace whose
   comment starts with `stormgate:` is deleted.

NOTE: a cleanup reverts every open fault of the target, even one of a run that is still going
on. So two runs must not share one target at the same time.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from chaos import netfilter
from chaos.faults import fault_for_kind
from chaos.ledger import Ledger
from chaos.targets.base import Target
from stormgate.errors import StormgateError

logger = logging.getLogger(__name__)


class RevertedLeftover(BaseModel):
    fault_id: str
    run_id: str
    kind: str
    undone: list[str] = Field(default_factory=list)


class FailedLeftover(BaseModel):
    fault_id: str
    run_id: str
    kind: str
    error: str


class CleanupReport(BaseModel):
    """Outcome of a cleanup on one target: faults reverted, stray rules deleted, and failures."""

    target: str
    reverted: list[RevertedLeftover] = Field(default_factory=list)
    deleted_rules: list[str] = Field(default_factory=list)
    """iptables rules with a stormgate comment that no open ledger entry accounted for."""
    failed: list[FailedLeftover] = Field(default_factory=list)

    @property
    def reverted_ids(self) -> list[str]:
        return [leftover.fault_id for leftover in self.reverted]

    def lines(self) -> list[str]:
        """Return one line per reverted fault, deleted rule and failure, for a terminal."""
        lines = [f"reverted {item.kind} {item.fault_id} of run {item.run_id}" for item in self.reverted]
        lines += [f"  {undone}" for item in self.reverted for undone in item.undone]
        lines += [f"deleted stray iptables rule: {rule}" for rule in self.deleted_rules]
        lines += [
            f"FAILED to revert {item.kind} {item.fault_id} of run {item.run_id}: {item.error}" for item in self.failed
        ]
        return lines or [f"nothing to clean up on {self.target}"]


def revert_leftovers(ledger: Ledger, target: Target) -> CleanupReport:
    """Revert every open ledger entry of this target and delete stray stormgate iptables rules."""
    report = CleanupReport(target=target.name)
    for entry in ledger.open_entries(target.name):
        try:
            fault = fault_for_kind(entry.kind)
        except StormgateError as error:
            # No fault kind can revert this entry. Marking it keeps it from failing every later
            # run, and the error log keeps the evidence.
            logger.error(
                "Ledger entry %s of run %s: %s; marking it reverted unchanged.", entry.fault_id, entry.run_id, error
            )
            ledger.record_reverted(entry)
            report.failed.append(
                FailedLeftover(fault_id=entry.fault_id, run_id=entry.run_id, kind=entry.kind, error=str(error))
            )
            continue
        try:
            result = fault.revert_json(target, entry.plan)
        except StormgateError as error:
            logger.error(
                "Run %s left fault %s on %s, and reverting it failed: %s",
                entry.run_id,
                entry.fault_id,
                target.name,
                error,
            )
            report.failed.append(
                FailedLeftover(fault_id=entry.fault_id, run_id=entry.run_id, kind=entry.kind, error=str(error))
            )
            continue
        ledger.record_reverted(entry)
        logger.warning("Run %s left fault %s on %s; reverted it.", entry.run_id, entry.fault_id, target.name)
        report.reverted.append(
            RevertedLeftover(fault_id=entry.fault_id, run_id=entry.run_id, kind=entry.kind, undone=result.undone)
        )

    netns = getattr(target, "network_namespace", None)
    if isinstance(netns, str) and netfilter.namespace_exists(netns):
        try:
            stray = netfilter.stormgate_rules(netns)
            report.deleted_rules = netfilter.delete_rules(netns, stray)
        except StormgateError as error:
            logger.error("Deleting stormgate iptables rules in %s failed: %s", netns, error)
            report.failed.append(FailedLeftover(fault_id="-", run_id="-", kind="partition", error=str(error)))
        for rule in report.deleted_rules:
            logger.warning("Deleted a stormgate iptables rule in %s that no open ledger entry listed: %s", netns, rule)
    return report
