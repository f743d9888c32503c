"""Load profiles give the expected user count at each moment and reject invalid settings."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from loadtests.profiles import (
    LoadShapeSpec,
    RampShape,
    ShapeTarget,
    SoakShape,
    SpikeShape,
    SteadyShape,
    StepShape,
    parse_shape,
    read_override,
)
from stormgate.errors import UsageError


@pytest.mark.parametrize(
    ("shape", "elapsed_s", "expected"),
    [
        (SteadyShape(users=10, spawn_rate=5, run_time_s=30), 0.0, ShapeTarget(10, 5.0)),
        (SteadyShape(users=10, spawn_rate=5, run_time_s=30), 29.9, ShapeTarget(10, 5.0)),
        (SteadyShape(users=10, spawn_rate=5, run_time_s=30), 30.0, None),
        (RampShape(start_users=0, end_users=100, ramp_s=10, hold_s=5), 0.0, ShapeTarget(0, 10.0)),
        (RampShape(start_users=0, end_users=100, ramp_s=10, hold_s=5), 5.0, ShapeTarget(50, 10.0)),
        (RampShape(start_users=0, end_users=100, ramp_s=10, hold_s=5), 12.0, ShapeTarget(100, 10.0)),
        (RampShape(start_users=0, end_users=100, ramp_s=10, hold_s=5), 15.0, None),
        (RampShape(start_users=100, end_users=20, ramp_s=8), 4.0, ShapeTarget(60, 10.0)),
        (StepShape(start_users=10, step_users=5, step_s=10, steps=3), 0.0, ShapeTarget(10, 50.0)),
        (StepShape(start_users=10, step_users=5, step_s=10, steps=3), 10.0, ShapeTarget(15, 50.0)),
        (StepShape(start_users=10, step_users=5, step_s=10, steps=3), 29.0, ShapeTarget(20, 50.0)),
        (StepShape(start_users=10, step_users=5, step_s=10, steps=3), 30.0, None),
        (SpikeShape(base_users=5, spike_users=50, before_s=10, spike_s=5, after_s=10), 9.0, ShapeTarget(5, 50.0)),
        (SpikeShape(base_users=5, spike_users=50, before_s=10, spike_s=5, after_s=10), 10.0, ShapeTarget(50, 1000.0)),
        (SpikeShape(base_users=5, spike_users=50, before_s=10, spike_s=5, after_s=10), 16.0, ShapeTarget(5, 1000.0)),
        (SpikeShape(base_users=5, spike_users=50, before_s=10, spike_s=5, after_s=10), 25.0, None),
        (SoakShape(users=40, ramp_s=20, soak_s=3600), 1.0, ShapeTarget(40, 2.0)),
        (SoakShape(users=40, ramp_s=20, soak_s=3600), 3620.0, None),
    ],
)
def test_profile_target_at(shape: LoadShapeSpec, elapsed_s: float, expected: ShapeTarget | None) -> None:
    assert shape.target_at(elapsed_s) == expected


@pytest.mark.parametrize(
    ("shape", "duration_s"),
    [
        (SteadyShape(users=1, run_time_s=12), 12.0),
        (RampShape(end_users=5, ramp_s=10, hold_s=3), 13.0),
        (StepShape(start_users=1, step_users=1, step_s=4, steps=5), 20.0),
        (SpikeShape(base_users=1, spike_users=9, before_s=2, spike_s=3, after_s=4), 9.0),
        (SoakShape(users=3, ramp_s=5, soak_s=100), 105.0),
    ],
)
def test_profile_duration(shape: LoadShapeSpec, duration_s: float) -> None:
    assert shape.duration_s == duration_s


def test_parse_shape_picks_kind_from_json() -> None:
    shape = parse_shape('{"kind": "spike", "base_users": 2, "spike_users": 20, "before_s": 1, "spike_s": 2}')

    assert isinstance(shape, SpikeShape)
    assert shape.spike_users == 20


def test_shape_round_trips_through_json() -> None:
    shape = StepShape(start_users=3, step_users=2, step_s=5, steps=4, rate_per_user=0.5)

    assert parse_shape(shape.model_dump_json()) == shape


def test_scenario_model_embeds_shape() -> None:
    class Load(BaseModel):
        shape: LoadShapeSpec

    load = Load.model_validate({"shape": {"kind": "ramp", "end_users": 30, "ramp_s": 10}})

    assert isinstance(load.shape, RampShape)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"kind": "wave", "users": 3}, "kind"),
        ({"kind": "steady", "users": 0, "run_time_s": 5}, "users"),
        ({"kind": "steady", "users": 5}, "run_time_s"),
        ({"kind": "ramp", "end_users": 5, "ramp_s": 0}, "ramp_s"),
        ({"kind": "step", "start_users": 5, "step_users": -3, "step_s": 1, "steps": 3}, "last step would have -1"),
        ({"kind": "spike", "base_users": 1, "spike_users": 5, "before_s": 1, "spike_s": 1, "extra": 1}, "extra"),
        ({"kind": "soak", "users": 5, "soak_s": 10, "rate_per_user": -1}, "rate_per_user"),
    ],
)
def test_invalid_shape_names_field(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(UsageError, match="Invalid load shape") as raised:
        parse_shape(data)

    assert fragment in str(raised.value)


@pytest.mark.parametrize("text", ["", "{", '{"users": -1, "spawn_rate": 1}', '{"users": 3}'])
def test_unreadable_override_ignored(text: str) -> None:
    assert read_override(text) is None


def test_override_read_from_control_file_text() -> None:
    override = read_override('{"users": 7, "spawn_rate": 3.5, "sequence": 2}')

    assert override is not None
    assert (override.users, override.spawn_rate, override.sequence) == (7, 3.5, 2)
