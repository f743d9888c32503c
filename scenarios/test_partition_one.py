"""Certification: the platform passes the partition-one scenario (see partition_one.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("sandbox")
@pytest.mark.scenario("partition-one")
def test_partition_one(certify: Callable[[str], ScenarioResult]) -> None:
    certify("partition_one.yaml")
