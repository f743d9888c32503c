"""Certification: the platform survives the loss of one replica."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("sandbox")
@pytest.mark.scenario("replica-loss")
def test_replica_loss(certify: Callable[[str], ScenarioResult]) -> None:
    certify("replica_loss.yaml")
