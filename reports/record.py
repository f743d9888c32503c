"""The run record: everything a verdict rests on, written as run.json in the report folder."""

from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from reports.timeline import TimelineEvent
from slo.model import SloResult, Verdict, combine
from slo.recovery import ClockResult

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    """Return a new run id: the UTC start time and four random hex digits, such as 20261204T213231Z-1a2b."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


class PhaseWindow(BaseModel):
    phase: str
    start: float
    end: float
    """Seconds since the Unix epoch (UTC)."""
    requests: int = 0
    failures: int = 0


class ScenarioResult(BaseModel):
    name: str
    verdict: Verdict = Verdict.INCONCLUSIVE
    reasons: list[str] = Field(default_factory=list)
    """One line per failed or inconclusive check, with measured value, limit, phase and source."""
    target: str = ""
    seed: int = 0
    phases: list[PhaseWindow] = Field(default_factory=list)
    slos: list[SloResult] = Field(default_factory=list)
    clocks: list[ClockResult] = Field(default_factory=list)
    faults: list[dict[str, Any]] = Field(default_factory=list)
    load: dict[str, Any] = Field(default_factory=dict)
    timeline: list[TimelineEvent] = Field(default_factory=list)

    def decide(self, extra: list[Verdict] | None = None) -> Verdict:
        """Set and return the verdict from every SLO, clock and extra verdict, with reasons."""
        verdicts = [result.verdict for result in self.slos] + [clock.verdict for clock in self.clocks] + (extra or [])
        for result in self.slos:
            if result.verdict != Verdict.PASS:
                self.reasons.append(result.message())
        for clock in self.clocks:
            if clock.verdict != Verdict.PASS:
                self.reasons.append(clock.message())
        self.verdict = combine(verdicts)
        return self.verdict


class RunRecord(BaseModel):
    run_id: str
    verdict: Verdict = Verdict.INCONCLUSIVE
    """Overall verdict: fail if any scenario failed, inconclusive if any could not be judged or none ran."""
    target: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    seed: int = 0
    dry_run: bool = False
    scenarios: list[ScenarioResult] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    """Failures outside any scenario, such as a sandbox that did not start."""
    usage_errors: list[str] = Field(default_factory=list)
    """Scenarios rejected before they ran: an invalid file, an unknown profile, a plan over a safety cap."""

    def finish(self) -> Verdict:
        verdicts = [scenario.verdict for scenario in self.scenarios]
        if self.errors or self.usage_errors:
            verdicts.append(Verdict.INCONCLUSIVE)
        self.verdict = combine(verdicts)
        return self.verdict

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "run.json"
        data = self.model_dump(mode="json")
        # The verdict goes first so that `head run.json` shows it.
        ordered = {"verdict": data.pop("verdict"), "run_id": data.pop("run_id"), **data}
        path.write_text(json.dumps(ordered, indent=2) + "\n", encoding="utf-8")
        logger.info("Run %s: wrote %s with verdict %s.", self.run_id, path, self.verdict.value)
        return path
