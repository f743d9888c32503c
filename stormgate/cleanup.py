"""Reverting faults that an earlier, crashed run left behind.

Two sources, so that a lost or damaged ledger still leaves nothing active:

1. the ledger: every injection without a "reverted" mark is reverted from its stored plan
   and then marked;
2. marks on what faults touch: every iptables rule in the target's network namespace whose
   comment starts with `stormgate:` is deleted.

A cleanup leaves alone the open entries of a run that may still be going on. Those are entries
whose owner process still runs on this host (same pid and start time) and is not the process
doing the cleanup, and entries written on another host, whose owner this host cannot check.
The iptables rules of those entries stay too. `force=True` reverts them all the same.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from chaos import netfilter
from chaos.faults import fault_for_kind
from chaos.ledger import Ledger, LedgerEntry
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


class SkippedLeftover(BaseModel):
    """An open entry that the cleanup left alone because its owner may still be running."""

    fault_id: str
    run_id: str
    kind: str
    reason: str


class CleanupReport(BaseModel):
    """Outcome of a cleanup on one target: faults reverted or skipped, stray rules deleted, and failures."""

    target: str
    reverted: list[RevertedLeftover] = Field(default_factory=list)
    skipped: list[SkippedLeftover] = Field(default_factory=list)
    deleted_rules: list[str] = Field(default_factory=list)
    """iptables rules with a stormgate comment that no open ledger entry accounted for."""
    failed: list[FailedLeftover] = Field(default_factory=list)

    @property
    def reverted_ids(self) -> list[str]:
        return [leftover.fault_id for leftover in self.reverted]

    def lines(self) -> list[str]:
        """Return one line per reverted or skipped fault, deleted rule and failure, for a terminal."""
        lines = [f"reverted {item.kind} {item.fault_id} of run {item.run_id}" for item in self.reverted]
        lines += [f"  {undone}" for item in self.reverted for undone in item.undone]
        lines += [f"skipped {item.kind} {item.fault_id} of run {item.run_id}: {item.reason}" for item in self.skipped]
        lines += [f"deleted stray iptables rule: {rule}" for rule in self.deleted_rules]
        lines += [
            f"FAILED to revert {item.kind} {item.fault_id} of run {item.run_id}: {item.error}" for item in self.failed
        ]
        return lines or [f"nothing to clean up on {self.target}"]


def skip_reason(entry: LedgerEntry) -> str | None:
    """Return why a cleanup must leave this open entry alone, or None when it may revert it."""
    owner = entry.owner
    if not owner.known:
        # NOTE: lines written before owners were recorded are reverted even if their run still goes on.
        return None
    if not owner.on_this_host:
        return (
            f"owned by process {owner.pid} on host {owner.host}, which this host cannot check; "
            "clean up on that host, or force the cleanup once that run has ended"
        )
    if owner.is_running() and not owner.is_current_process():
        return f"owned by running process {owner.pid}"
    return None


def stray_rules(rules: list[str], *, kept_fault_ids: set[str]) -> list[str]:
    """Return the stormgate rules whose comment names none of `kept_fault_ids`.

    A comment has the form `stormgate:<run id>:<fault id>`, so a rule belongs to a fault
    when its comment ends with ":" and that fault id.
    """
    stray = []
    for rule in rules:
        comment = netfilter.comment_of(rule) or ""
        if not comment.startswith(netfilter.COMMENT_PREFIX):
            continue
        if any(comment.endswith(f":{fault_id}") for fault_id in kept_fault_ids):
            continue
        stray.append(rule)
    return stray


def revert_leftovers(ledger: Ledger, target: Target, *, force: bool = False) -> CleanupReport:
    """Revert the open ledger entries of this target and delete stray stormgate iptables rules.

    Entries of a run that may still be going on (see `skip_reason`) are skipped and listed
    in the report, and so are their iptables rules, unless `force` is true.
    """
    report = CleanupReport(target=target.name)
    for entry in ledger.open_entries(target.name):
        reason = skip_reason(entry)
        if reason is not None and not force:
            logger.warning(
                "Run %s has fault %s open on %s; skipped it, %s.", entry.run_id, entry.fault_id, target.name, reason
            )
            report.skipped.append(
                SkippedLeftover(fault_id=entry.fault_id, run_id=entry.run_id, kind=entry.kind, reason=reason)
            )
            continue
        if reason is not None:
            logger.warning(
                "Run %s has fault %s open on %s, %s; reverting it because the cleanup is forced.",
                entry.run_id, entry.fault_id, target.name, reason,
            )  # fmt: skip
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
            skipped_fault_ids = {item.fault_id for item in report.skipped}
            stray = stray_rules(netfilter.stormgate_rules(netns), kept_fault_ids=skipped_fault_ids)
            report.deleted_rules = netfilter.delete_rules(netns, stray)
        except StormgateError as error:
            logger.error("Deleting stormgate iptables rules in %s failed: %s", netns, error)
            report.failed.append(FailedLeftover(fault_id="-", run_id="-", kind="partition", error=str(error)))
        for rule in report.deleted_rules:
            logger.warning("Deleted a stormgate iptables rule in %s that no open ledger entry listed: %s", netns, rule)
    return report
