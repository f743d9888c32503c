"""Blast-radius limits: the share cap, the target allowlist, protected instances and seeded selection."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chaos.faults import FAULT_SPEC_ADAPTER, InstanceKill, InstanceKillSpec, PartitionSpec, TrafficFloodSpec
from chaos.safety import SafetyPolicy, check_share, check_target_allowed, select_instances
from chaos.targets.base import Instance
from stormgate.errors import SafetyViolation
from tests.unit.test_ledger_stateful import FakeTarget


def target_with(count: int) -> FakeTarget:
    target = FakeTarget()
    for index in range(count):
        target.add(f"replica-{index}")
    return target


@pytest.mark.parametrize(
    ("requested", "available", "max_share", "allow_all", "message"),
    [
        (3, 4, 0.5, False, r"asks for 3 of 4 instances, more than the cap of 50% \(2 instances\)"),
        (2, 3, 0.5, False, r"asks for 2 of 3 instances, more than the cap of 50% \(1 instances\)"),
        (4, 4, 1.0, False, r"would hit all 4 instances; set allow_all: true"),
        (5, 4, 0.5, True, r"asks for 5 instances but only 4 are running"),
        (1, 0, 0.5, False, r"found no instance to act on"),
    ],
)
def test_share_cap_rejects_with_message(
    requested: int, available: int, max_share: float, allow_all: bool, message: str
) -> None:
    with pytest.raises(SafetyViolation, match=message):
        check_share(requested=requested, available=available, max_share=max_share, allow_all=allow_all, fault="f")


@pytest.mark.parametrize(
    ("requested", "available", "max_share", "allow_all"),
    [(2, 4, 0.5, False), (1, 1, 0.5, True), (4, 4, 0.5, True), (1, 2, 0.1, False)],
)
def test_share_cap_allows_within_limits(requested: int, available: int, max_share: float, allow_all: bool) -> None:
    check_share(requested=requested, available=available, max_share=max_share, allow_all=allow_all, fault="f")


def test_plan_rejects_more_than_cap_naming_it() -> None:
    fault = InstanceKill(InstanceKillSpec(count=3))

    with pytest.raises(SafetyViolation, match=r"instance-kill on sandbox/fake asks for 3 of 4 .* cap of 50%"):
        fault.plan(target_with(4), fault_id="f", seed=1)


def test_protected_instances_are_never_selected() -> None:
    target = target_with(2)
    target.add("haproxy")
    target.add("prometheus")
    target.protected_instances = lambda: {"haproxy", "prometheus"}  # type: ignore[method-assign]

    chosen = {
        instance.name
        for seed in range(50)
        for instance in InstanceKill(InstanceKillSpec(count=1)).plan(target, fault_id="f", seed=seed).instances
    }

    assert chosen == {"replica-0", "replica-1"}


def test_same_seed_selects_same_instances() -> None:
    candidates = [Instance(name=f"replica-{index}") for index in range(10)]

    first = select_instances(candidates, 3, selection="random", seed=42)
    again = select_instances(list(reversed(candidates)), 3, selection="random", seed=42)

    assert [instance.name for instance in first] == [instance.name for instance in again]


def test_repeated_kill_plan_replays_from_seed() -> None:
    spec = InstanceKillSpec(count=1, interval_s=1.0, duration_s=5.0)

    first = InstanceKill(spec).plan(target_with(5), fault_id="f", seed=7)
    again = InstanceKill(spec).plan(target_with(5), fault_id="f", seed=7)

    assert len(first.rounds) == 5
    assert first.rounds == again.rounds
    assert first.seed == 7


@pytest.mark.parametrize(
    ("target_name", "patterns", "allowed"),
    [
        ("sandbox/default", ("sandbox/*",), True),
        ("kubernetes/staging", ("sandbox/*",), False),
        ("kubernetes/staging", ("sandbox/*", "kubernetes/staging"), True),
    ],
)
def test_target_allowlist(target_name: str, patterns: tuple[str, ...], allowed: bool) -> None:
    policy = SafetyPolicy(allowed_targets=patterns)

    if allowed:
        check_target_allowed(target_name, policy)
    else:
        with pytest.raises(SafetyViolation, match=f"Target {target_name} is not in the allowed targets"):
            check_target_allowed(target_name, policy)


@pytest.mark.parametrize(
    ("data", "model"),
    [
        ({"kind": "instance-kill", "share": 0.5}, InstanceKillSpec),
        ({"kind": "partition", "mode": "split", "count": 1}, PartitionSpec),
        ({"kind": "flood", "duration_s": 5, "min_rps": 100}, TrafficFloodSpec),
    ],
)
def test_fault_spec_union_picks_model_by_kind(data: dict[str, object], model: type) -> None:
    assert isinstance(FAULT_SPEC_ADAPTER.validate_python(data), model)


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "instance-kill", "count": 1, "share": 0.5},
        {"kind": "instance-kill", "interval_s": 2},
        {"kind": "flood", "duration_s": 5},
        {"kind": "partition", "direction": "sideways"},
        {"kind": "meteor"},
    ],
    ids=["count-and-share", "interval-without-duration", "flood-without-rate", "bad-direction", "unknown-kind"],
)
def test_invalid_fault_spec_is_rejected(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FAULT_SPEC_ADAPTER.validate_python(data)
