"""The run's timeline: every phase boundary and fault action with both clocks."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)


class TimelineEvent(BaseModel):
    kind: str
    """Event kind, such as "phase.start", "fault.inject" or "clock.stop"."""
    wall_time: float
    """Seconds since the Unix epoch (UTC): what PromQL ranges use."""
    monotonic_time: float
    """time.monotonic() of the harness process: what durations use."""
    run_id: str
    details: dict[str, Any] = Field(default_factory=dict)


class Timeline:
    """Append-only list of events for one scenario run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[TimelineEvent] = []

    def add(self, kind: str, **details: Any) -> TimelineEvent:
        event = TimelineEvent(
            kind=kind, wall_time=time.time(), monotonic_time=time.monotonic(), run_id=self.run_id, details=details
        )
        self.events.append(event)
        logger.debug("Run %s: timeline event %s %s", self.run_id, kind, details)
        return event
