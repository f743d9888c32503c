"""Reverting faults that an earlier, crashed run left behind, from the ledger."""

from __future__ import annotations

import logging

from chaos.faults.instance_kill import InstanceKill, InstanceKillPlan, InstanceKillSpec
from chaos.ledger import Ledger
from chaos.targets.base import Target

logger = logging.getLogger(__name__)


def revert_leftovers(ledger: Ledger, target: Target) -> list[str]:
    """Revert every open ledger entry of this target; return the fault ids reverted."""
    reverted = []
    for entry in ledger.open_entries(target.name):
        if entry.kind == "instance-kill":
            plan = InstanceKillPlan.model_validate(entry.plan)
            InstanceKill(InstanceKillSpec()).revert(target, plan)
        else:
            logger.error(
                "Ledger entry %s has unknown kind %s; marking it reverted unchanged.", entry.fault_id, entry.kind
            )
        ledger.record_reverted(entry)
        logger.warning("Run %s left fault %s on %s; reverted it.", entry.run_id, entry.fault_id, target.name)
        reverted.append(entry.fault_id)
    return reverted
