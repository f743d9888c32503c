"""Load profiles as data: how many users run at each moment of a run.

`LoadShapeSpec` is a pydantic union discriminated on ``kind``, so a scenario YAML can
embed it (``load: {shape: {kind: spike, ...}}``) and the runner can hand it to Locust as
JSON in STORMGATE_SHAPE. This module imports nothing from Locust; the Locust classes that
follow these profiles are in `loadtests.shapes`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from stormgate.errors import UsageError

SHAPE_VARIABLE = "STORMGATE_SHAPE"
"""Environment variable with the JSON of a `LoadShapeSpec`."""
CONTROL_VARIABLE = "STORMGATE_CONTROL_FILE"
"""Environment variable naming the JSON file through which the harness changes the user count."""
RATE_VARIABLE = "STORMGATE_RATE_PER_USER"
"""Environment variable with each user's request rate per second; 0 means no wait between requests."""
FLOOD_PATH_VARIABLE = "STORMGATE_FLOOD_PATH"
"""Environment variable with the path that flood users request."""
FLOOD_MAX_PER_USER_VARIABLE = "STORMGATE_FLOOD_MAX_PER_USER"
"""Environment variable with the requests after which one flood user stops; 0 or unset means no limit."""


class ShapeTarget(NamedTuple):
    users: int
    spawn_rate: float


class _ShapeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_user: float = Field(default=1.0, ge=0.0)
    """Requests per second of each user; 0 sends the next request as soon as the last one ends."""

    @property
    def duration_s(self) -> float:
        raise NotImplementedError

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        """Return the users and spawn rate at `elapsed_s` after the start; None once the run is over."""
        raise NotImplementedError


class SteadyShape(_ShapeBase):
    """A constant user count, reached at `spawn_rate` users per second."""

    kind: Literal["steady"] = "steady"
    users: int = Field(ge=1, le=100_000)
    spawn_rate: float = Field(default=50.0, gt=0.0)
    """Users started per second."""
    run_time_s: float = Field(gt=0.0)

    @property
    def duration_s(self) -> float:
        return self.run_time_s

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        if elapsed_s >= self.run_time_s:
            return None
        return ShapeTarget(self.users, self.spawn_rate)


class RampShape(_ShapeBase):
    """A linear change from `start_users` to `end_users` over `ramp_s`, then `end_users` for `hold_s`."""

    kind: Literal["ramp"] = "ramp"
    start_users: int = Field(default=1, ge=0, le=100_000)
    end_users: int = Field(ge=1, le=100_000)
    ramp_s: float = Field(gt=0.0)
    hold_s: float = Field(default=0.0, ge=0.0)

    @property
    def duration_s(self) -> float:
        return self.ramp_s + self.hold_s

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        if elapsed_s >= self.duration_s:
            return None
        progress = min(1.0, elapsed_s / self.ramp_s)
        users = round(self.start_users + (self.end_users - self.start_users) * progress)
        # A spawn rate equal to the ramp's slope lets Locust follow the line between ticks.
        spawn_rate = max(1.0, abs(self.end_users - self.start_users) / self.ramp_s)
        return ShapeTarget(users, spawn_rate)


class StepShape(_ShapeBase):
    """`steps` plateaus of `step_s` each, starting at `start_users` and adding `step_users` each time."""

    kind: Literal["step"] = "step"
    start_users: int = Field(ge=1, le=100_000)
    step_users: int = Field(ge=-100_000, le=100_000)
    step_s: float = Field(gt=0.0)
    steps: int = Field(ge=1, le=1000)
    spawn_rate: float = Field(default=50.0, gt=0.0)

    @model_validator(mode="after")
    def _users_stay_positive(self) -> StepShape:
        last = self.start_users + self.step_users * (self.steps - 1)
        if last < 0:
            raise ValueError(f"the last step would have {last} users; make step_users or steps smaller")
        return self

    @property
    def duration_s(self) -> float:
        return self.step_s * self.steps

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        if elapsed_s >= self.duration_s:
            return None
        step = min(self.steps - 1, math.floor(elapsed_s / self.step_s))
        return ShapeTarget(self.start_users + self.step_users * step, self.spawn_rate)


class SpikeShape(_ShapeBase):
    """`base_users` for `before_s`, `spike_users` for `spike_s`, then `base_users` for `after_s`."""

    kind: Literal["spike"] = "spike"
    base_users: int = Field(ge=0, le=100_000)
    spike_users: int = Field(ge=1, le=100_000)
    before_s: float = Field(ge=0.0)
    spike_s: float = Field(gt=0.0)
    after_s: float = Field(default=0.0, ge=0.0)
    spawn_rate: float = Field(default=50.0, gt=0.0)
    """Users started per second outside the spike."""
    spike_spawn_rate: float = Field(default=1000.0, gt=0.0)
    """Users started or stopped per second at the edges of the spike."""

    @property
    def duration_s(self) -> float:
        return self.before_s + self.spike_s + self.after_s

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        if elapsed_s >= self.duration_s:
            return None
        if elapsed_s < self.before_s:
            return ShapeTarget(self.base_users, self.spawn_rate)
        if elapsed_s < self.before_s + self.spike_s:
            return ShapeTarget(self.spike_users, self.spike_spawn_rate)
        return ShapeTarget(self.base_users, self.spike_spawn_rate)


class SoakShape(_ShapeBase):
    """A ramp to `users` over `ramp_s`, then the same count for a long `soak_s`."""

    kind: Literal["soak"] = "soak"
    users: int = Field(ge=1, le=100_000)
    ramp_s: float = Field(default=60.0, gt=0.0)
    soak_s: float = Field(gt=0.0)

    @property
    def duration_s(self) -> float:
        return self.ramp_s + self.soak_s

    def target_at(self, elapsed_s: float) -> ShapeTarget | None:
        if elapsed_s >= self.duration_s:
            return None
        return ShapeTarget(self.users, max(1.0, self.users / self.ramp_s))


LoadShapeSpec = Annotated[
    SteadyShape | RampShape | StepShape | SpikeShape | SoakShape,
    Field(discriminator="kind"),
]
"""One load profile; ``kind`` picks the model."""

_ADAPTER: TypeAdapter[LoadShapeSpec] = TypeAdapter(LoadShapeSpec)


def parse_shape(data: str | dict[str, object]) -> LoadShapeSpec:
    """Validate a profile from JSON text or a mapping; raise UsageError naming the field."""
    try:
        if isinstance(data, str):
            return _ADAPTER.validate_json(data)
        return _ADAPTER.validate_python(data)
    except ValidationError as error:
        raise UsageError(f"Invalid load shape {data!r}: {error}") from error


def shape_to_json(shape: LoadShapeSpec) -> str:
    return shape.model_dump_json()


def shape_from_environment() -> LoadShapeSpec | None:
    """Return the profile in STORMGATE_SHAPE, or None when the variable is unset."""
    text = os.environ.get(SHAPE_VARIABLE)
    if not text:
        return None
    return parse_shape(text)


class UserOverride(BaseModel):
    """Contents of the control file: a user count that replaces the profile's from now on."""

    model_config = ConfigDict(extra="forbid")

    users: int = Field(ge=0, le=100_000)
    spawn_rate: float = Field(gt=0.0)
    sequence: int = Field(default=0, ge=0)
    """Grows with each change, so a reader can tell a new override from one it has applied."""


def read_override(text: str) -> UserOverride | None:
    """Parse the control file; None when it is empty or half-written."""
    if not text.strip():
        return None
    try:
        return UserOverride.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None
