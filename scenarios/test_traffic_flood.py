"""Certification: the platform passes the traffic-flood scenario (see traffic_flood.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("sandbox")
@pytest.mark.scenario("traffic-flood")
def test_traffic_flood(certify: Callable[[str], ScenarioResult]) -> None:
    certify("traffic_flood.yaml")
