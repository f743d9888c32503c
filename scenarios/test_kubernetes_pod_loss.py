"""Certification on a cluster: the workload survives the loss of one pod (see kubernetes_pod_loss.yaml)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reports.record import ScenarioResult


@pytest.mark.target("kubernetes")
@pytest.mark.scenario("kubernetes-pod-loss")
def test_kubernetes_pod_loss(certify: Callable[[str], ScenarioResult]) -> None:
    certify("kubernetes_pod_loss.yaml")
