"""Certification: the platform passes the repeated-kills scenario (see repeated_kills.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("sandbox")
@pytest.mark.scenario("repeated-kills")
def test_repeated_kills(certify: Callable[[str], ScenarioResult]) -> None:
    certify("repeated_kills.yaml")
