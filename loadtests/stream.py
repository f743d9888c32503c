"""Reading and aggregating the per-second statistics that the Locust plugin writes."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from loadtests.records import EndpointRecord, SecondRecord, WindowStats, aggregate

logger = logging.getLogger(__name__)

__all__ = ["EndpointRecord", "SecondRecord", "StatsStream", "WindowStats", "aggregate"]

RecordListener = Callable[[list[SecondRecord]], None]


class StatsStream:
    """Tails every ``stats-*.jsonl`` file in a folder and keeps all records read so far.

    `poll` may run from several threads (the harness and the Prometheus exporter); a lock
    keeps each appended line read exactly once.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records: list[SecondRecord] = []
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._listeners: list[RecordListener] = []

    def subscribe(self, listener: RecordListener) -> None:
        """Call `listener` with every batch of new records, from inside `poll`."""
        with self._lock:
            self._listeners.append(listener)
            known = list(self.records)
        if known:
            listener(known)

    def poll(self) -> list[SecondRecord]:
        """Read the lines appended since the last call and return their records."""
        with self._lock:
            new: list[SecondRecord] = []
            for path in sorted(self.folder.glob("stats-*.jsonl")):
                offset = self._offsets.get(path, 0)
                with path.open("rb") as stream_file:
                    stream_file.seek(offset)
                    data = stream_file.read()
                # Only whole lines: the writer may be half-way through the last one.
                complete = data[: data.rfind(b"\n") + 1]
                self._offsets[path] = offset + len(complete)
                for line in complete.splitlines():
                    if line.strip():
                        new.append(SecondRecord.model_validate(json.loads(line)))
            self.records.extend(new)
            if new:
                for listener in self._listeners:
                    listener(new)
            return new

    def latest_second(self) -> int | None:
        return max((record.ts for record in self.records), default=None)

    def latest_by_source(self) -> dict[str, int]:
        """Return the newest second seen from each Locust process."""
        latest: dict[str, int] = {}
        for record in self.records:
            key = record.source_key
            latest[key] = max(latest.get(key, record.ts), record.ts)
        return latest

    def window(self, start: float, end: float) -> WindowStats:
        """Aggregate the seconds that lie inside [start, end) on the wall clock."""
        return aggregate(record for record in self.records if start <= record.ts + 0.5 < end)
