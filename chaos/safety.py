"""Blast-radius limits for faults."""

from __future__ import annotations

import math

from stormgate.errors import SafetyViolation

DEFAULT_MAX_SHARE = 0.5
"""Share of a target's instances that one fault may hit unless the scenario allows more."""


def check_share(*, requested: int, available: int, max_share: float, allow_all: bool, fault: str) -> None:
    """Raise SafetyViolation when a fault would hit more instances than the cap allows."""
    if available == 0:
        raise SafetyViolation(f"Fault {fault} found no instance to act on; check that the target runs instances")
    if requested > available:
        raise SafetyViolation(
            f"Fault {fault} asks for {requested} instances but only {available} are running; lower its count"
        )
    if requested == available and not allow_all:
        raise SafetyViolation(
            f"Fault {fault} would hit all {available} instances; set allow_all: true in the fault to permit it"
        )
    cap = max(1, math.floor(available * max_share))
    if requested > cap and not allow_all:
        raise SafetyViolation(
            f"Fault {fault} asks for {requested} of {available} instances, more than the cap of "
            f"{max_share:.0%} ({cap} instances); lower its count or raise max_share in the fault"
        )
