"""Recovery clocks: how long the platform and its clients took to recover from a fault.

Every clock starts at the injection (monotonic time) and stops at the first moment its
condition is met. A clock still running at its limit fails the scenario with the measured
value and the limit.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from typing import Literal

from pydantic import BaseModel

from chaos.targets.base import RecoveryProbe
from loadtests.stream import WindowStats
from slo.model import Verdict

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.02
"""Platform probe interval: well under HAProxy's check interval, so detection adds little."""


class ClockResult(BaseModel):
    name: Literal["platform", "client", "slo"]
    fault_id: str
    verdict: Verdict
    measured_s: float | None
    """Seconds from injection until the condition held; None when it never did."""
    limit_s: float
    reason: str = ""

    def message(self) -> str:
        measured = "did not stop" if self.measured_s is None else f"{self.measured_s:.3f} s"
        text = (
            f"Recovery clock {self.name!r} for {self.fault_id}: {self.verdict.value.upper()}, "
            f"measured {measured}, limit {self.limit_s:g} s"
        )
        return text + (f"; {self.reason}" if self.reason else "")


class PlatformClock:
    """Polls a target's recovery probe in a background thread from the injection on."""

    def __init__(self, *, fault_id: str, probe: RecoveryProbe, limit_s: float, started_monotonic: float) -> None:
        self.fault_id = fault_id
        self.probe = probe
        self.limit_s = limit_s
        self.started = started_monotonic
        self.stopped: float | None = None
        self.error: str = ""
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"platform-clock-{fault_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        deadline = self.started + self.limit_s
        while time.monotonic() < deadline:
            try:
                if self.probe.poll():
                    self.stopped = time.monotonic()
                    break
            except Exception as error:  # noqa: BLE001 - any probe failure is recorded, the clock keeps running
                self.error = f"{type(error).__name__}: {error}"
                logger.warning("Platform clock of %s: probe failed: %s", self.fault_id, self.error)
            time.sleep(POLL_INTERVAL_S)
        self._finished.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the clock stopped or reached its limit; return True when it has finished."""
        return self._finished.wait(timeout_s)

    def result(self) -> ClockResult:
        if self.stopped is not None:
            measured = self.stopped - self.started
            return ClockResult(
                name="platform",
                fault_id=self.fault_id,
                verdict=Verdict.PASS if measured <= self.limit_s else Verdict.FAIL,
                measured_s=measured,
                limit_s=self.limit_s,
            )
        reason = f"not recovered at the limit: {self.probe.describe()}"
        if self.error:
            reason += f"; last probe error: {self.error}"
        return ClockResult(
            name="platform",
            fault_id=self.fault_id,
            verdict=Verdict.FAIL,
            measured_s=None,
            limit_s=self.limit_s,
            reason=reason,
        )


def client_clock(
    *,
    fault_id: str,
    stats: WindowStats,
    injected_wall: float,
    min_success_ratio: float,
    stability_s: int,
    limit_s: float,
    observed_until_wall: float,
) -> ClockResult:
    """Measure from per-second client statistics when the success ratio was back for good.

    The clock stops at the start of the first second from which `stability_s` consecutive
    seconds each meet the ratio. Resolution is one second, the granularity of the stream.
    """
    seconds = sorted(second for second in stats.seconds if second + 1 > injected_wall)
    run_start: int | None = None
    previous = -2
    for second in seconds:
        requests, failures = stats.seconds[second]
        good = requests > 0 and (requests - failures) / requests >= min_success_ratio
        if not good:
            run_start = None
            continue
        if run_start is None or second != previous + 1:
            run_start = second
        previous = second
        if second - run_start + 1 >= stability_s:
            measured = max(0.0, run_start - injected_wall)
            measured = min(measured, observed_until_wall - injected_wall)
            verdict = Verdict.PASS if measured <= limit_s else Verdict.FAIL
            return ClockResult(name="client", fault_id=fault_id, verdict=verdict, measured_s=measured, limit_s=limit_s)
    if not seconds:
        return ClockResult(
            name="client", fault_id=fault_id, verdict=Verdict.INCONCLUSIVE, measured_s=None, limit_s=limit_s,
            reason="no client statistics after the injection",
        )  # fmt: skip
    return ClockResult(
        name="client", fault_id=fault_id, verdict=Verdict.FAIL, measured_s=None, limit_s=limit_s,
        reason=f"the success ratio never stayed at or above {min_success_ratio} for {stability_s} s",
    )  # fmt: skip


def first_stable_time(points: list[tuple[float, float]], *, threshold: float, stability_s: float) -> float | None:
    """Return the timestamp from which every point meets `threshold` for at least `stability_s`.

    Points are (timestamp, value) pairs in time order; NaN values and gaps longer than
    twice the typical step break a run, because nothing is known about those moments.
    """
    if len(points) < 2:
        return None
    steps = sorted(later[0] - earlier[0] for earlier, later in itertools.pairwise(points))
    max_gap_s = 2 * steps[len(steps) // 2]
    run_start: float | None = None
    previous_time: float | None = None
    for timestamp, value in points:
        good = not math.isnan(value) and value >= threshold
        if previous_time is not None and timestamp - previous_time > max_gap_s:
            run_start = None
        previous_time = timestamp
        if not good:
            run_start = None
            continue
        if run_start is None:
            run_start = timestamp
        if timestamp - run_start >= stability_s:
            return run_start
    return None


def slo_clock(
    *,
    fault_id: str,
    points: list[tuple[float, float]],
    injected_wall: float,
    min_success_ratio: float,
    stability_s: float,
    limit_s: float,
    observed_until_wall: float,
    query: str,
) -> ClockResult:
    """Measure from a PromQL success-ratio series when the SLO was back for good."""
    after = [(timestamp, value) for timestamp, value in points if timestamp >= injected_wall]
    if len(after) < 2:
        return ClockResult(
            name="slo", fault_id=fault_id, verdict=Verdict.INCONCLUSIVE, measured_s=None, limit_s=limit_s,
            reason=f"Prometheus returned {len(after)} points after the injection; query: {query}",
        )  # fmt: skip
    recovered_at = first_stable_time(after, threshold=min_success_ratio, stability_s=stability_s)
    observed_s = after[-1][0] - injected_wall
    if recovered_at is None and observed_s < limit_s:
        # The series ends before the limit: the clock might still have stopped in time.
        return ClockResult(
            name="slo", fault_id=fault_id, verdict=Verdict.INCONCLUSIVE, measured_s=None, limit_s=limit_s,
            reason=f"Prometheus covers only {observed_s:.1f} s after the injection, less than the limit; "
            f"lengthen the steady phase; query: {query}",
        )  # fmt: skip
    if recovered_at is None:
        return ClockResult(
            name="slo", fault_id=fault_id, verdict=Verdict.FAIL, measured_s=None, limit_s=limit_s,
            reason=f"the PromQL success ratio never stayed at or above {min_success_ratio} for {stability_s:g} s; "
            f"query: {query}",
        )  # fmt: skip
    measured = min(recovered_at - injected_wall, observed_until_wall - injected_wall)
    verdict = Verdict.PASS if measured <= limit_s else Verdict.FAIL
    return ClockResult(name="slo", fault_id=fault_id, verdict=verdict, measured_s=measured, limit_s=limit_s)
