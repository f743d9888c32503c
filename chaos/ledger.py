"""Journal of injected faults, kept on disk so that leftovers survive a crash of the harness.

An injection is appended before anything is touched, and marked reverted afterwards.
Any entry without a matching "reverted" line is a fault that may still be active.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)


class LedgerEntry(BaseModel):
    fault_id: str
    run_id: str
    target: str
    kind: str
    plan: dict[str, Any]
    """The fault's plan as JSON, enough to revert it without the harness that made it."""
    state: str
    """"injecting" (written before the fault touches anything) or "reverted"."""
    wall_time: float


class Ledger:
    """Append-only JSON-lines journal with one writer at a time (flock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, entry: LedgerEntry) -> None:
        with self.path.open("a", encoding="utf-8") as journal:
            fcntl.flock(journal, fcntl.LOCK_EX)
            journal.write(entry.model_dump_json() + "\n")
            journal.flush()
            # The entry must be on disk before the fault acts, or a crash could lose it.
            os.fsync(journal.fileno())

    def record_injecting(
        self, *, fault_id: str, run_id: str, target: str, kind: str, plan: dict[str, Any]
    ) -> LedgerEntry:
        """Append the injection and return once it is on disk; call before the fault touches anything."""
        entry = LedgerEntry(
            fault_id=fault_id,
            run_id=run_id,
            target=target,
            kind=kind,
            plan=plan,
            state="injecting",
            wall_time=time.time(),
        )
        self._append(entry)
        return entry

    def record_reverted(self, entry: LedgerEntry) -> None:
        self._append(entry.model_copy(update={"state": "reverted", "wall_time": time.time()}))

    def entries(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(LedgerEntry.model_validate_json(line))
            except ValidationError as error:
                # A crash in the middle of an append leaves a torn last line. Its fault never
                # acted, because every fault waits for its entry to reach the disk.
                logger.warning("Ledger %s line %d is unreadable and skipped: %s", self.path, number, error)
        return entries

    def open_entries(self, target: str | None = None) -> list[LedgerEntry]:
        """Return injections that were never marked reverted, oldest first."""
        reverted = {entry.fault_id for entry in self.entries() if entry.state == "reverted"}
        return [
            entry
            for entry in self.entries()
            if entry.state == "injecting"
            and entry.fault_id not in reverted
            and (target is None or entry.target == target)
        ]
