"""Scenario specifications: a load profile, a fault, SLOs per phase and recovery limits.

Scenarios are YAML files in `scenarios/` or `ScenarioSpec` objects built in Python. Both
are validated the same way, and the error for an invalid one names the file, the field and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chaos.faults import FaultSpec
from loadtests.profiles import LoadShapeSpec
from slo.model import SloSpec
from stormgate.errors import InvalidScenario

DEFAULT_PROFILE = "quick"
"""Profile of `make certify`: short phases that keep the suite within minutes."""


class LoadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: int = Field(default=50, ge=1, le=100_000)
    """Simulated users; each sends one request per second, so this is also the request rate."""
    spawn_rate: float = Field(default=50.0, gt=0.0)
    """Users started per second during warmup."""
    processes: int = Field(default=1, ge=1, le=64)
    """Locust processes on this machine (`locust --processes`)."""
    shape: LoadShapeSpec | None = None
    """Load shape (steady, ramp, step, spike, soak) in place of a steady `users` from the warmup on."""


class PhaseDurations(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup_s: float = Field(default=5.0, ge=0.0)
    baseline_s: float = Field(default=15.0, ge=2.0)
    chaos_s: float = Field(default=10.0, ge=2.0)
    """Observation window that starts at the injection."""
    steady_s: float = Field(default=15.0, ge=2.0)


class RecoveryLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform_s: float = Field(default=20.0, gt=0.0)
    """Maximum time from injection until every instance is ready again."""
    client_s: float = Field(default=20.0, gt=0.0)
    """Maximum time from injection until clients see the SLO again for `stability_s`."""
    client_min_success_ratio: float = Field(default=0.99, gt=0.0, le=1.0)
    stability_s: int = Field(default=3, ge=1)
    """Seconds the client and slo conditions must hold before their clocks stop."""
    slo_s: float = Field(default=20.0, gt=0.0)
    """Maximum time from injection until the PromQL success ratio is back within `slo`'s target."""
    slo: str | None = None
    """Name of the Prometheus availability SLO the slo clock follows; default: the first one."""


class KillSwitch(BaseModel):
    """Hard floor on what clients see during chaos: below it the fault is reverted at once."""

    model_config = ConfigDict(extra="forbid")

    min_success_ratio: float = Field(gt=0.0, le=1.0)
    """Client success ratio, over the last `window_s` complete seconds, that aborts the chaos."""
    window_s: int = Field(default=3, ge=1, le=60)


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    load: LoadSpec = LoadSpec()
    phases: PhaseDurations = PhaseDurations()
    fault: FaultSpec
    slos: list[SloSpec] = Field(min_length=1)
    recovery: RecoveryLimits = RecoveryLimits()
    kill_switch: KillSwitch | None = None
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named overrides, such as `nightly` with longer phases; chosen with --profile."""

    @model_validator(mode="after")
    def _shape_covers_scenario(self) -> ScenarioSpec:
        shape = self.load.shape
        if shape is not None and shape.duration_s < self.duration_s:
            raise ValueError(
                f"load.shape lasts {shape.duration_s:g} s, shorter than the scenario's {self.duration_s:g} s; "
                "Locust would stop before the steady phase ends, so lengthen the shape"
            )
        return self

    @model_validator(mode="after")
    def _fault_fits_chaos_phase(self) -> ScenarioSpec:
        fault_s = getattr(self.fault, "duration_s", None)
        if fault_s is not None and fault_s > self.phases.chaos_s:
            raise ValueError(
                f"fault.duration_s {fault_s:g} is longer than phases.chaos_s {self.phases.chaos_s:g}; "
                "lengthen the chaos phase or shorten the fault"
            )
        return self

    @property
    def duration_s(self) -> float:
        """Maximum duration of the scenario: every phase, with the chaos phase stretched to the recovery limit."""
        phases = self.phases
        recovery_s = max(self.recovery.platform_s, self.recovery.client_s)
        return phases.warmup_s + phases.baseline_s + max(phases.chaos_s, recovery_s) + phases.steady_s


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_scenario(path: Path, *, profile: str = DEFAULT_PROFILE) -> ScenarioSpec:
    """Read and validate a scenario YAML file; raise InvalidScenario naming the file and field.

    A profile other than the default applies the file's `profiles.<name>` overrides; a
    scenario without that profile runs with its own settings.
    """
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidScenario(f"Scenario file {path} cannot be read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise InvalidScenario(f"Scenario file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise InvalidScenario(f"Scenario file {path} must contain a mapping, such as 'name: replica-loss'")
    profiles = data.get("profiles") or {}
    if profile != DEFAULT_PROFILE:
        if not isinstance(profiles, dict) or not isinstance(profiles.get(profile), dict):
            known = ", ".join([DEFAULT_PROFILE, *sorted(profiles)]) if isinstance(profiles, dict) else DEFAULT_PROFILE
            raise InvalidScenario(
                f"Scenario file {path} has no profile {profile!r}; choose one of {known} with --profile, "
                f"or add profiles.{profile} to the file"
            )
        data = merge(data, profiles[profile])
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as error:
        raise InvalidScenario(describe_validation_error(path, error)) from error


def describe_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"Scenario file {path} is invalid:"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown option; remove it or check its spelling")
        else:
            lines.append(f"  {field}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)
