"""History across runs: one JSON line per run, so trends survive the report folders."""

from __future__ import annotations

import json
from pathlib import Path

from reports.record import RunRecord


def append_history(record: RunRecord, path: Path) -> None:
    """Append the run's verdicts and recovery times to the history file."""
    line = {
        "run_id": record.run_id,
        "verdict": record.verdict.value,
        "started_at": record.started_at,
        "target": record.target,
        "seed": record.seed,
        "scenarios": {
            scenario.name: {
                "verdict": scenario.verdict.value,
                "recovery_s": {clock.name: clock.measured_s for clock in scenario.clocks},
            }
            for scenario in record.scenarios
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as history:
        history.write(json.dumps(line) + "\n")


def read_history(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
