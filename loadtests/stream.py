"""Reading and aggregating the per-second statistics that the Locust plugin writes."""

from __future__ import annotations

import base64
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from hdrh.histogram import HdrHistogram
from pydantic import BaseModel

from loadtests.stats_plugin import new_histogram

logger = logging.getLogger(__name__)


class EndpointRecord(BaseModel):
    requests: int
    failures: dict[str, int]
    histogram: str
    """Base64 of the compressed HDR histogram of latencies in microseconds; empty without requests."""

    def decode_histogram(self) -> HdrHistogram | None:
        if not self.histogram:
            return None
        return HdrHistogram.decode(base64.b64decode(self.histogram))


class SecondRecord(BaseModel):
    """Statistics of one Locust process for one wall-clock second."""

    ts: int
    """Start of the second, in seconds since the Unix epoch (UTC)."""
    pid: int
    users: int
    endpoints: dict[str, EndpointRecord]


class StatsStream:
    """Tails every ``stats-*.jsonl`` file in a folder and keeps all records read so far."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.records: list[SecondRecord] = []
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[SecondRecord]:
        """Read the lines appended since the last call and return their records."""
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
        return new

    def latest_second(self) -> int | None:
        return max((record.ts for record in self.records), default=None)

    def window(self, start: float, end: float) -> WindowStats:
        """Aggregate the seconds that lie inside [start, end) on the wall clock."""
        return aggregate(record for record in self.records if start <= record.ts + 0.5 < end)


@dataclass
class WindowStats:
    """Client statistics over a time window, merged over processes and endpoints."""

    requests: int = 0
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    seconds: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Requests and failures per wall-clock second."""
    histogram: HdrHistogram = field(default_factory=new_histogram)

    @property
    def success_ratio(self) -> float:
        """Successful requests over all requests; NaN when there were none."""
        if self.requests == 0:
            return math.nan
        return (self.requests - self.failures) / self.requests

    def latency_ms(self, quantile: float) -> float:
        """Latency at the quantile (0..1] in milliseconds; NaN when there were no requests."""
        if self.requests == 0:
            return math.nan
        return float(self.histogram.get_value_at_percentile(quantile * 100.0)) / 1000.0


def aggregate(records: object) -> WindowStats:
    stats = WindowStats()
    for record in records:  # type: ignore[attr-defined]
        assert isinstance(record, SecondRecord)
        requests, failures = stats.seconds.get(record.ts, (0, 0))
        for endpoint in record.endpoints.values():
            requests += endpoint.requests
            failed = sum(endpoint.failures.values())
            failures += failed
            stats.requests += endpoint.requests
            stats.failures += failed
            for kind, count in endpoint.failures.items():
                stats.failure_kinds[kind] = stats.failure_kinds.get(kind, 0) + count
            histogram = endpoint.decode_histogram()
            if histogram is not None:
                stats.histogram.add(histogram)
        stats.seconds[record.ts] = (requests, failures)
    return stats
