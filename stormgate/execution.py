"""Running one scenario through its phases: warmup, baseline, chaos, recovery, steady.

This module only wires the layers together: load from `loadtests`, the fault from
`chaos`, the judgement from `slo`, and the record from `reports`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from chaos.faults import Fault, FaultPlan, TrafficFlood, TrafficFloodSpec, build_fault
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.safety import DEFAULT_POLICY, SafetyPolicy
from chaos.targets.base import Target
from loadtests.runner import LocustRunner
from reports.record import PhaseWindow, ScenarioResult
from reports.timeline import Timeline
from slo.client import evaluate_client
from slo.model import Phase, SloResult, Source, Verdict, combine
from slo.prometheus import PrometheusSource
from slo.recovery import ClockResult, PlatformClock, client_clock, slo_clock
from stormgate.errors import FaultNotEffective, LoadGeneratorError, SafetyViolation, StormgateError
from stormgate.scenario import ScenarioSpec

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0
LOAD_MARGIN_S = 60.0
"""Extra Locust run time beyond the scenario's longest duration; the harness stops it earlier."""
MAX_MISSING_SECONDS = 1
"""Seconds of a judged phase that may lack client statistics before the phase is inconclusive."""
RECORD_WAIT_S = 3.0
INTERRUPTING_SIGNALS = ("SIGINT", "SIGTERM")


@dataclass
class RunContext:
    run_id: str
    seed: int
    report_dir: Path
    ledger: Ledger
    dry_run: bool = False
    policy: SafetyPolicy = DEFAULT_POLICY
    """Targets that faults may act on in this run."""


class ScenarioExecution:
    """One run of one scenario against one target."""

    def __init__(
        self, spec: ScenarioSpec, target: Target, context: RunContext, prometheus: PrometheusSource | None
    ) -> None:
        self.spec = spec
        self.target = target
        self.context = context
        self.prometheus = prometheus
        self.timeline = Timeline(context.run_id)
        self.result = ScenarioResult(name=spec.name, target=target.name, seed=context.seed)
        self.windows: dict[Phase, tuple[float, float]] = {}
        self.fault_id = f"{context.run_id}/{spec.name}/1"
        self.fault: Fault[Any] | None = None
        self.guard: FaultGuard | None = None
        self.clock: PlatformClock | None = None
        self.injected_wall = 0.0
        self.clock_start_wall = 0.0
        """When the recovery clocks start: the injection of a one-off fault, the end of a lasting one."""
        self.aborted = False
        self.reverted_elsewhere = False
        self.load_unhealthy = False
        self.baseline_rps: float | None = float(spec.load.users)
        """Request rate of the baseline phase; until it is measured, the rate the users are meant to send."""

    # ----- entry point -----

    def plan(self) -> FaultPlan:
        """Build the fault and compute its plan; touches nothing, so a dry run can print it."""
        spec = self.spec.fault
        if isinstance(spec, TrafficFloodSpec):
            workdir = self.context.report_dir / self.spec.name / "flood"
            self.fault = TrafficFlood(spec, baseline_rps=self.baseline_rps, workdir_root=workdir)
        else:
            self.fault = build_fault(spec)
        plan: FaultPlan = self.fault.plan(
            self.target, fault_id=self.fault_id, seed=self.context.seed, run_id=self.context.run_id
        )
        return plan

    def run(self) -> ScenarioResult:
        """Run every phase and return the judged result.

        Raises SafetyViolation or UsageError before any load starts when the fault cannot be
        planned on this target, such as a kill of every instance without allow_all.
        """
        # Plan once before the load starts: a plan over a safety cap is bad input, not a failing platform.
        self.plan()
        extra: list[Verdict] = []
        workdir = self.context.report_dir / self.spec.name
        load = LocustRunner(
            host=self.target.load_url,
            users=self.spec.load.users,
            spawn_rate=self.spec.load.spawn_rate,
            processes=self.spec.load.processes,
            shape=self.spec.load.shape,
            allowed_hosts=tuple(getattr(self.target, "allowed_load_hosts", ())),
            run_time_s=self.spec.duration_s + LOAD_MARGIN_S,
            workdir=workdir,
            run_id=self.context.run_id,
        )
        try:
            with load:
                load.wait_for_first_record()
                healthy = self._run_phases(load)
            exit_code = load.process.returncode if load.process else None
            self.result.load = {
                "users": self.spec.load.users,
                "processes": self.spec.load.processes,
                "exit_code": exit_code,
            }
            if healthy:
                self._evaluate_after_run(load)
            extra += self._check_load_health(load)
        except LoadGeneratorError as error:
            self.result.reasons.append(f"Load generator failed, so nothing can be judged: {error}")
            extra.append(Verdict.INCONCLUSIVE)
        except (FaultNotEffective, SafetyViolation) as error:
            self.result.reasons.append(f"{type(error).__name__}: {error}")
            extra.append(Verdict.FAIL)
        except StormgateError as error:
            self.result.reasons.append(f"{type(error).__name__}: {error}")
            extra.append(Verdict.INCONCLUSIVE)
        finally:
            self.result.timeline = self.timeline.events
        if self.aborted:
            extra.append(Verdict.FAIL)
        if self.reverted_elsewhere:
            extra.append(Verdict.INCONCLUSIVE)
        self.result.decide(extra)
        logger.info("Run %s: scenario %s verdict %s.", self.context.run_id, self.spec.name, self.result.verdict.value)
        return self.result

    # ----- phases -----

    def _run_phases(self, load: LocustRunner) -> bool:
        """Run every phase; return False when the baseline gate stopped the scenario."""
        durations = self.spec.phases
        self._phase(load, Phase.WARMUP, durations.warmup_s)
        self._phase(load, Phase.BASELINE, durations.baseline_s)
        if not self._baseline_gate(load):
            return False

        plan = self.plan()
        self._chaos_phase(load, plan)
        self._recovery_phase(load)
        self._phase(load, Phase.STEADY, durations.steady_s)
        self._wait_for_records(load, until_wall=self.windows[Phase.STEADY][1])
        return True

    def _phase(
        self,
        load: LocustRunner,
        phase: Phase,
        duration_s: float,
        *,
        started_wall: float | None = None,
        guard: FaultGuard | None = None,
    ) -> None:
        start_wall = started_wall if started_wall is not None else time.time()
        end_wall = start_wall + duration_s
        self.timeline.add("phase.start", phase=phase.value)
        logger.info("Run %s: %s phase %s for %.0f s.", self.context.run_id, self.spec.name, phase.value, duration_s)
        next_progress = time.monotonic() + PROGRESS_INTERVAL_S
        while (remaining_s := end_wall - time.time()) > 0:
            if guard is not None and guard.active:
                # Raises FaultNotEffective as soon as a later round of a lasting fault fails.
                guard.wait(min(0.25, remaining_s))
            else:
                time.sleep(min(0.25, remaining_s))
            if guard is not None and guard.reverted_by in INTERRUPTING_SIGNALS:
                # The guard reverted on SIGINT or SIGTERM; the run must stop, not go on without its fault.
                raise KeyboardInterrupt(f"{guard.reverted_by} received; the fault was reverted")
            load.check_alive()
            load.stream.poll()
            if guard is not None and self._kill_switch_tripped(load, guard):
                break
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_INTERVAL_S
                done = load.stream.window(start_wall, time.time())
                logger.info(
                    "Run %s: %s %s %.0f/%.0f s, %d requests, %d failed.",
                    self.context.run_id, self.spec.name, phase.value,
                    time.time() - start_wall, duration_s, done.requests, done.failures,
                )  # fmt: skip
        self.windows[phase] = (start_wall, min(end_wall, time.time()))
        self.timeline.add("phase.end", phase=phase.value)

    def _baseline_gate(self, load: LocustRunner) -> bool:
        """Judge the baseline; False means "not healthy before chaos" and nothing is injected."""
        start, end = self.windows[Phase.BASELINE]
        self._wait_for_records(load, until_wall=end)
        problems = load.health_problems()
        if problems:
            # A sick generator cannot tell whether the platform is healthy, so nothing is injected.
            self.result.reasons += [f"Load generator unfit to judge the baseline: {problem}" for problem in problems]
            self.load_unhealthy = True
            return False
        baseline = load.stream.window(start, end)
        self.baseline_rps = baseline.requests / max(1.0, end - start)
        results = self._evaluate_phase(load, Phase.BASELINE)
        self.result.slos.extend(results)
        gate = combine([result.verdict for result in results])
        if gate == Verdict.PASS:
            return True
        self.result.reasons.append(
            f"Not healthy before chaos: the baseline did not meet its SLOs ({gate.value}), so no fault was injected."
        )
        logger.warning(
            "Run %s: %s is not healthy before chaos; skipping the fault.", self.context.run_id, self.spec.name
        )
        return False

    def _chaos_phase(self, load: LocustRunner, plan: FaultPlan) -> None:
        """Inject, verify and hold the fault for the chaos phase; the guard reverts it on every exit path."""
        assert self.fault is not None
        guard = FaultGuard(
            self.context.ledger, self.target, self.fault, plan,
            run_id=self.context.run_id, timeline=self.timeline, verify=False, policy=self.context.policy,
        )  # fmt: skip
        self.guard = guard
        # Only a single kill is over the moment it strikes; every other fault lasts until it ends or is reverted.
        lasting = plan.duration_s is not None or not plan.restarts_instances
        with guard:
            assert guard.inject_result is not None
            self.injected_wall = guard.inject_result.wall_time
            if not lasting:
                # A one-off fault such as a single kill: recovery starts the moment it strikes.
                self.clock_start_wall = self.injected_wall
                self._start_platform_clock(plan, started_monotonic=guard.inject_result.monotonic_time)
            guard.verify()
            self._phase(load, Phase.CHAOS, self.spec.phases.chaos_s, started_wall=self.injected_wall, guard=guard)
            if guard.reverted_by is None and self._reverted_elsewhere(plan.fault_id):
                # Another process (stormgate cleanup --force) removed the fault: the platform was
                # not under the planned fault for the whole phase, so its result proves nothing.
                self.reverted_elsewhere = True
                self.result.reasons.append(
                    f"Fault {plan.fault_id} was reverted by another process before the chaos phase ended, "
                    "so the platform was not under the planned fault and the scenario cannot be judged."
                )
        self.result.faults.append(
            {
                "plan": plan.model_dump(mode="json"),
                "inject": guard.inject_result.model_dump(mode="json") if guard.inject_result else None,
                "verify": guard.verify_result.model_dump(mode="json") if guard.verify_result else None,
                "revert": guard.revert_result.model_dump(mode="json") if guard.revert_result else None,
                "reverted_by": guard.reverted_by,
            }
        )
        if guard.reverted_by in INTERRUPTING_SIGNALS:
            raise KeyboardInterrupt(f"{guard.reverted_by} received; the fault was reverted")
        if lasting:
            # A lasting fault (partition, flood, repeated kills): the platform can only recover once it ends.
            self.clock_start_wall = time.time()
            self._start_platform_clock(plan, started_monotonic=time.monotonic())

    def _reverted_elsewhere(self, fault_id: str) -> bool:
        """Return True when the ledger marks the fault reverted although this run's guard did not revert it."""
        return any(entry.fault_id == fault_id and entry.state == "reverted" for entry in self.context.ledger.entries())

    def _start_platform_clock(self, plan: FaultPlan, *, started_monotonic: float) -> None:
        self.clock = PlatformClock(
            fault_id=plan.fault_id,
            probe=self.target.recovery_probe(plan.instances, expect_restart=plan.restarts_instances),
            limit_s=self.spec.recovery.platform_s,
            started_monotonic=started_monotonic,
        )
        self.clock.start()

    def _recovery_phase(self, load: LocustRunner) -> None:
        assert self.clock is not None
        start_wall = time.time()
        self.timeline.add("phase.start", phase=Phase.RECOVERY.value)
        while not self.clock.wait(0.25):
            load.check_alive()
            load.stream.poll()
        self.windows[Phase.RECOVERY] = (start_wall, time.time())
        self.timeline.add("phase.end", phase=Phase.RECOVERY.value)
        clock = self.clock.result()
        self.timeline.add("clock.stop", clock="platform", fault_id=clock.fault_id, measured_s=clock.measured_s)
        self.result.clocks.append(clock)
        logger.info("Run %s: %s", self.context.run_id, clock.message())

    def _kill_switch_tripped(self, load: LocustRunner, guard: FaultGuard) -> bool:
        """Revert the fault at once when clients fall below the hard floor; return True if it tripped."""
        switch = self.spec.kill_switch
        if switch is None or self.aborted:
            return False
        # Only complete seconds: the current one is still filling up.
        last_complete = int(time.time())
        stats = load.stream.window(last_complete - switch.window_s, last_complete)
        if len(stats.seconds) < switch.window_s or stats.requests == 0:
            return False
        if stats.success_ratio >= switch.min_success_ratio:
            return False
        self.aborted = True
        reason = (
            f"Kill switch: client success ratio {stats.success_ratio:.4f} over the last {switch.window_s} s "
            f"fell below the hard floor {switch.min_success_ratio} in phase chaos, "
            f"{time.time() - self.injected_wall:.1f} s after the injection; "
            "the chaos was aborted and the fault reverted."
        )
        logger.error("Run %s: %s", self.context.run_id, reason)
        self.result.reasons.append(reason)
        self.timeline.add("killswitch.trip", success_ratio=stats.success_ratio, floor=switch.min_success_ratio)
        guard.revert(reason="kill switch")
        return True

    # ----- judgement -----

    def _wait_for_records(self, load: LocustRunner, *, until_wall: float) -> None:
        """Wait until the client statistics cover the second that contains `until_wall`."""
        deadline = time.monotonic() + RECORD_WAIT_S
        while time.monotonic() < deadline:
            load.stream.poll()
            latest = load.stream.latest_second()
            if latest is not None and latest + 1 >= until_wall:
                return
            time.sleep(0.1)

    def _evaluate_phase(self, load: LocustRunner, phase: Phase) -> list[SloResult]:
        start, end = self.windows[phase]
        results = []
        stats = load.stream.window(start, end)
        for spec in self.spec.slos:
            if phase not in spec.phases:
                continue
            if spec.source == Source.CLIENT:
                results.append(evaluate_client(spec, phase, stats, start=start, end=end))
            elif self.prometheus is None:
                results.append(
                    SloResult(
                        slo=spec.name, phase=phase, source=Source.PROMETHEUS, verdict=Verdict.INCONCLUSIVE,
                        objective=spec.objective_text(), measured=None, window_start=start, window_end=end,
                        reason="no Prometheus URL is configured; pass --prometheus-url",
                    )
                )  # fmt: skip
            else:
                results.append(self.prometheus.evaluate(spec, phase, start=start, end=end))
        for result in results:
            logger.info("Run %s: %s", self.context.run_id, result.message())
        return results

    def _evaluate_after_run(self, load: LocustRunner) -> None:
        for phase in (Phase.CHAOS, Phase.RECOVERY, Phase.STEADY):
            start, end = self.windows.get(phase, (0.0, 0.0))
            if end - start < 2.0:
                # The platform recovered inside the chaos window, so there is no recovery phase to judge.
                continue
            self.result.slos.extend(self._evaluate_phase(load, phase))
        recovery = self.spec.recovery
        stats = load.stream.window(self.clock_start_wall - 1, time.time())
        clock = client_clock(
            fault_id=self.fault_id,
            stats=stats,
            injected_wall=self.clock_start_wall,
            min_success_ratio=recovery.client_min_success_ratio,
            stability_s=recovery.stability_s,
            limit_s=recovery.client_s,
            observed_until_wall=self.windows[Phase.STEADY][1],
        )
        self.result.clocks.append(clock)
        logger.info("Run %s: %s", self.context.run_id, clock.message())
        slo = self._slo_clock()
        if slo is not None:
            self.result.clocks.append(slo)
            logger.info("Run %s: %s", self.context.run_id, slo.message())

    def _slo_clock(self) -> ClockResult | None:
        """Measure the slo clock: from the injection until the Prometheus availability SLO is met again."""
        recovery = self.spec.recovery
        candidates = [
            spec
            for spec in self.spec.slos
            if spec.source == Source.PROMETHEUS and spec.kind == "availability" and spec.prometheus is not None
        ]
        if recovery.slo is not None:
            candidates = [spec for spec in candidates if spec.name == recovery.slo]
        if not candidates or self.prometheus is None:
            return None

        spec = candidates[0]
        assert spec.prometheus is not None
        # Three scrape intervals per rate window: increase() needs two samples, one more absorbs jitter.
        window_s = max(3, int(3 * self.prometheus.scrape_interval_s))
        errors = f"sum(increase({spec.prometheus.errors}[{window_s}s]))"
        total = f"sum(increase({spec.prometheus.total}[{window_s}s]))"
        query = f"1 - {errors} / {total}"

        end = self.windows[Phase.STEADY][1]
        # Points are shifted back by the window below, so the range runs one window past the end.
        self.prometheus.wait_for_scrape_after(end + window_s)
        try:
            series = self.prometheus.client.custom_query_range(
                query,
                start_time=datetime.fromtimestamp(self.clock_start_wall, UTC),
                end_time=datetime.fromtimestamp(end + window_s, UTC),
                step=f"{self.prometheus.scrape_interval_s:g}s",
            )
        except (requests.RequestException, PrometheusApiClientException) as error:
            return ClockResult(
                name="slo", fault_id=self.fault_id, verdict=Verdict.INCONCLUSIVE, measured_s=None,
                limit_s=recovery.slo_s, reason=f"Prometheus failed to answer: {str(error)[:300]}; query: {query}",
            )  # fmt: skip

        points = [(float(stamp), float(value)) for sample in series for stamp, value in sample["values"]]
        # Each point counts the errors of the `window_s` before it, so the series lags the clients by the window.
        return slo_clock(
            fault_id=self.fault_id,
            points=[(stamp - window_s, value) for stamp, value in sorted(points)],
            injected_wall=self.clock_start_wall,
            min_success_ratio=spec.min_success_ratio or 1.0,
            stability_s=recovery.stability_s,
            limit_s=recovery.slo_s,
            observed_until_wall=end,
            query=query,
        )

    def _check_load_health(self, load: LocustRunner) -> list[Verdict]:
        """Return INCONCLUSIVE for a generator that was unfit to judge by, or left gaps in a judged phase."""
        verdicts = [Verdict.INCONCLUSIVE] if self.load_unhealthy else []
        if not self.load_unhealthy:
            problems = load.health_problems()
            self.result.reasons += [f"Load generator unfit to judge the run: {problem}" for problem in problems]
            verdicts += [Verdict.INCONCLUSIVE] * bool(problems)
        for phase, (start, end) in self.windows.items():
            stats = load.stream.window(start, end)
            expected = int(end - start)
            missing = expected - len(stats.seconds)
            self.result.phases.append(
                PhaseWindow(phase=phase.value, start=start, end=end, requests=stats.requests, failures=stats.failures)
            )
            if phase != Phase.WARMUP and missing > MAX_MISSING_SECONDS:
                self.result.reasons.append(
                    f"Load generator wrote no statistics for {missing} of {expected} s in phase {phase.value}; "
                    "it was stalled or overloaded, so the phase cannot be judged."
                )
                verdicts.append(Verdict.INCONCLUSIVE)
        return verdicts
