"""Terminal summary of a run: one line per scenario and the reasons behind each verdict."""

from __future__ import annotations

from pathlib import Path

from reports.record import RunRecord


def render_summary(record: RunRecord, run_json: Path) -> list[str]:
    lines = [f"run {record.run_id} on {record.target or 'no target'} (seed {record.seed})"]
    for scenario in record.scenarios:
        clocks = ", ".join(
            f"{clock.name} {clock.measured_s:.2f} s" if clock.measured_s is not None else f"{clock.name} not stopped"
            for clock in scenario.clocks
        )
        lines.append(
            f"  {scenario.verdict.value.upper():<13} {scenario.name}" + (f"  [recovery: {clocks}]" if clocks else "")
        )
        for reason in scenario.reasons:
            lines.append(f"                - {reason}")
    for label, errors in (("ERROR", record.errors), ("INVALID", record.usage_errors)):
        for error in errors:
            first, *rest = error.splitlines() or [""]
            lines.append(f"  {label:<13} {first}")
            lines += [f"                {line}" for line in rest]
    lines.append(f"VERDICT: {record.verdict.value.upper()}   (record: {run_json})")
    return lines
