"""Ground truth: a configured startup delay must come out as the measured platform recovery time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from chaos.faults.instance_kill import InstanceKill, InstanceKillSpec
from chaos.targets.sandbox import SandboxTarget
from sandbox.environment import Sandbox
from slo.model import Verdict
from slo.recovery import PlatformClock
from tests.conftest import requires_sandbox

pytestmark = requires_sandbox

TOLERANCE_S = 0.5


def measure_recovery(sandbox: Sandbox, *, limit_s: float) -> tuple[float | None, float, Verdict]:
    target = SandboxTarget(sandbox)
    fault = InstanceKill(InstanceKillSpec(count=1))
    plan = fault.plan(target, fault_id="ground-truth", seed=3)
    injected = time.monotonic()
    fault.inject(target, plan)
    clock = PlatformClock(
        fault_id=plan.fault_id, probe=target.recovery_probe(plan.instances), limit_s=limit_s, started_monotonic=injected
    )
    clock.start()
    fault.verify(target, plan)
    clock.wait()
    elapsed = time.monotonic() - injected
    result = clock.result()
    return result.measured_s, elapsed, result.verdict


@pytest.mark.parametrize("startup_delay_s", [2.0, 4.0])
def test_platform_clock_measures_startup_delay(make_sandbox: Callable[..., Sandbox], startup_delay_s: float) -> None:
    sandbox = make_sandbox(replicas=3, startup_delay_s=startup_delay_s)
    expected_s = startup_delay_s + sandbox.config.detection_time_s

    measured_s, elapsed_s, verdict = measure_recovery(sandbox, limit_s=15.0)

    assert verdict == Verdict.PASS
    assert measured_s is not None
    assert abs(measured_s - expected_s) <= TOLERANCE_S, f"measured {measured_s:.3f} s, expected {expected_s:.3f} s"
    assert measured_s <= elapsed_s


def test_platform_clock_fails_at_its_limit(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(replicas=2, startup_delay_s=6.0)

    measured_s, elapsed_s, verdict = measure_recovery(sandbox, limit_s=2.0)

    assert verdict == Verdict.FAIL
    assert measured_s is None
    assert elapsed_s >= 2.0
