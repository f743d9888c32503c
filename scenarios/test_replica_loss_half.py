"""Certification: the platform passes the replica-loss-half scenario (see replica_loss_half.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("sandbox")
@pytest.mark.scenario("replica-loss-half")
def test_replica_loss_half(certify: Callable[[str], ScenarioResult]) -> None:
    certify("replica_loss_half.yaml")
