"""Journal of injected faults, kept on disk so that leftovers survive a crash of the harness.

An injection is appended before anything is touched, and marked reverted afterwards.
Any entry without a matching "reverted" line is a fault that may still be active.

Each entry names its owner: the process that wrote it, by pid, host name and start time
(field 22 of /proc/<pid>/stat, in clock ticks after boot). The start time distinguishes a live
owner from a later process that reuses its pid, so a cleanup can leave alone the faults of a run
that is still going on.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

PROC_ROOT = Path("/proc")
_DEAD_STATES = frozenset({"Z", "X", "x"})
"""/proc/<pid>/stat states of a process that has exited: zombie and dead."""


def process_start_ticks(pid: int) -> int | None:
    """Return the start time of a running process in clock ticks after boot, or None when it is not running.

    A zombie counts as not running. Reads /proc, so on a system without it every process
    looks not running.
    """
    try:
        stat = (PROC_ROOT / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 is the command name in parentheses and may itself contain spaces and ")",
    # so the fields are counted from the last ")": field 3 (state) is the first after it.
    fields = stat[stat.rfind(")") + 1 :].split()
    if len(fields) < 20 or fields[0] in _DEAD_STATES:
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Owner:
    """The process that wrote a ledger entry."""

    pid: int
    host: str
    start_time_ticks: int
    """Field 22 of /proc/<pid>/stat; 0 when it could not be read."""

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid=pid, host=socket.gethostname(), start_time_ticks=process_start_ticks(pid) or 0)

    @property
    def known(self) -> bool:
        """Whether the entry names an owner at all; lines written before owners were recorded do not."""
        return self.pid > 0

    @property
    def on_this_host(self) -> bool:
        return self.host in ("", socket.gethostname())

    def is_running(self) -> bool:
        """Return whether this process still runs on this host, judged by its pid and start time."""
        if not self.known or not self.on_this_host:
            return False
        ticks = process_start_ticks(self.pid)
        if ticks is None:
            return False
        # NOTE: without a recorded start time a reused pid cannot be distinguished from the owner.
        return self.start_time_ticks == 0 or ticks == self.start_time_ticks

    def is_current_process(self) -> bool:
        return self.is_running() and self.pid == os.getpid()


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
    owner_pid: int = 0
    """Pid of the process that wrote the entry; 0 in lines written before owners were recorded."""
    owner_host: str = ""
    owner_start_time_ticks: int = 0
    """Start time of the owner, field 22 of /proc/<pid>/stat, which distinguishes the owner from a reused pid."""

    @property
    def owner(self) -> Owner:
        return Owner(pid=self.owner_pid, host=self.owner_host, start_time_ticks=self.owner_start_time_ticks)


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
        """Append the injection and return once it is on disk; call before the fault touches anything.

        The current process is recorded as the entry's owner.
        """
        owner = Owner.current()
        entry = LedgerEntry(
            fault_id=fault_id,
            run_id=run_id,
            target=target,
            kind=kind,
            plan=plan,
            state="injecting",
            wall_time=time.time(),
            owner_pid=owner.pid,
            owner_host=owner.host,
            owner_start_time_ticks=owner.start_time_ticks,
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
