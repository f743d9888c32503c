"""Locust load shapes that follow a `loadtests.profiles` profile.

`ProfileShape` runs the profile in STORMGATE_SHAPE. A locustfile for plain ``locust -f``
can instead subclass it with a fixed profile::

    class Spike(ProfileShape):
        profile = SpikeShape(base_users=10, spike_users=200, before_s=30, spike_s=20)

Each tick (Locust calls `tick` about once per second) also reads the control file named
by STORMGATE_CONTROL_FILE. A user count written there by the harness replaces the
profile's count until the profile ends. A file keeps working without a web API, a free
port or a connection from the harness; the cost is up to one tick of delay.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

from locust import LoadTestShape

from loadtests.profiles import (
    CONTROL_VARIABLE,
    LoadShapeSpec,
    ShapeTarget,
    UserOverride,
    read_override,
    shape_from_environment,
)

logger = logging.getLogger(__name__)


class ProfileShape(LoadTestShape):
    """A Locust shape driven by a profile and by the harness's control file."""

    abstract: ClassVar[bool] = True
    profile: ClassVar[LoadShapeSpec | None] = None
    """Fixed profile of a subclass; None reads STORMGATE_SHAPE."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        spec = self.profile if self.profile is not None else shape_from_environment()
        if spec is None:
            raise RuntimeError(f"{type(self).__name__} needs a profile: set the class attribute or STORMGATE_SHAPE")
        self.spec: LoadShapeSpec = spec
        control = os.environ.get(CONTROL_VARIABLE)
        self.control_path = Path(control) if control else None
        self.override: UserOverride | None = None

    def read_control(self) -> None:
        if self.control_path is None:
            return
        try:
            text = self.control_path.read_text(encoding="utf-8")
        except OSError:
            return
        override = read_override(text)
        if override is not None and (self.override is None or override.sequence > self.override.sequence):
            logger.info("Changing the user count to %d at %.0f users/s.", override.users, override.spawn_rate)
            self.override = override

    def tick(self) -> ShapeTarget | None:
        target = self.spec.target_at(self.get_run_time())  # type: ignore[no-untyped-call]
        if target is None:
            return None
        self.read_control()
        if self.override is not None:
            return ShapeTarget(self.override.users, self.override.spawn_rate)
        return target


class EnvironmentShape(ProfileShape):
    """The shape that the default locustfile loads when STORMGATE_SHAPE is set."""

    abstract: ClassVar[bool] = False
