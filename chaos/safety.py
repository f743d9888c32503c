"""Blast-radius limits for faults: share cap, target allowlist, protected instances, seeded selection."""

from __future__ import annotations

import fnmatch
import math
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chaos.targets.base import Instance, Target
from stormgate.errors import SafetyViolation

DEFAULT_MAX_SHARE = 0.5
"""Share of a target's instances that one fault may hit unless the scenario allows more."""
DEFAULT_ALLOWED_TARGETS = ("sandbox/*",)


class SafetyPolicy(BaseModel):
    """Limits of a run that apply to every fault in it, whatever the scenario requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_targets: tuple[str, ...] = Field(default=DEFAULT_ALLOWED_TARGETS, min_length=1)
    """Glob patterns (fnmatch) of target names that faults may act on, such as "sandbox/*"."""


DEFAULT_POLICY = SafetyPolicy()


def check_target_allowed(target_name: str, policy: SafetyPolicy) -> None:
    """Raise SafetyViolation unless the target name matches one of the policy's allowed patterns."""
    if any(fnmatch.fnmatchcase(target_name, pattern) for pattern in policy.allowed_targets):
        return
    raise SafetyViolation(
        f"Target {target_name} is not in the allowed targets ({', '.join(policy.allowed_targets)}); "
        "add a matching pattern to allowed_targets in the run configuration to permit faults on it"
    )


def share_cap(*, available: int, max_share: float, allow_all: bool) -> int:
    """Return how many of `available` instances one fault may hit at the same time."""
    if allow_all:
        return available
    # At least one, so a small target can still be tested; never all of them.
    return min(max(1, math.floor(available * max_share)), max(available - 1, 0))


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
    cap = share_cap(available=available, max_share=max_share, allow_all=allow_all)
    if requested > cap:
        raise SafetyViolation(
            f"Fault {fault} asks for {requested} of {available} instances, more than the cap of "
            f"{max_share:.0%} ({cap} instances); lower its count or raise max_share in the fault"
        )


def eligible_instances(target: Target) -> list[Instance]:
    """Return the target's running instances minus the protected ones (load generators, monitoring)."""
    protected = target.protected_instances()
    return [instance for instance in target.instances() if instance.name not in protected]


def requested_count(*, count: int | None, share: float | None, available: int) -> int:
    """Turn a fault's count or share into a number of instances; a share rounds down but is at least one."""
    if share is not None:
        return max(1, math.floor(available * share))
    return count or 1


def select_instances(
    candidates: list[Instance], wanted: int, *, selection: Literal["random", "oldest"], seed: int
) -> list[Instance]:
    """Pick `wanted` instances; a random pick depends only on the seed and the sorted candidate names."""
    ordered = sorted(candidates, key=lambda instance: instance.name)
    if selection == "oldest":
        return sorted(ordered, key=lambda instance: instance.started_at)[:wanted]
    return random.Random(seed).sample(ordered, wanted)
