"""pytest plugin of stormgate: options, fixtures, markers and the run record.

The repository's conftest.py loads it; elsewhere use ``pytest -p stormgate.plugin``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chaos.ledger import Ledger
from reports.history import append_history
from reports.html import write_html
from reports.record import RunRecord, ScenarioResult, new_run_id
from reports.summary import render_summary
from sandbox.environment import state_root
from slo.model import Verdict
from slo.prometheus import PrometheusSource
from stormgate.errors import InvalidScenario, SafetyViolation, UsageError
from stormgate.execution import RunContext, ScenarioExecution
from stormgate.scenario import DEFAULT_PROFILE, ScenarioSpec, load_scenario
from stormgate.targets import OpenedTarget, add_target_options, check_target_options, open_target

logger = logging.getLogger(__name__)

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


@dataclass
class RunState:
    """Plugin state of one pytest session, kept in the config stash."""

    run_id: str
    report_dir: Path
    record: RunRecord
    seed: int
    dry_run: bool
    judged: set[str] = field(default_factory=set)
    """Node ids of scenario tests that produced a result."""
    has_scenarios: bool = False


RUN_STATE = pytest.StashKey[RunState]()
REJECTED_BEFORE_RUN = (InvalidScenario, UsageError, SafetyViolation)
_OPEN_STATES: list[RunState] = []
"""Run states of this process, for the keyboard-interrupt hook, which gets no config."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stormgate", "stormgate certification")
    add_target_options(group)
    group.addoption(
        "--prometheus-url", default=None, help="Prometheus base URL for PromQL SLOs (default: the target's own)"
    )
    group.addoption(
        "--report-dir",
        default=None,
        help="folder for run.json and the evidence of each scenario (default: runs/<run id>)",
    )
    group.addoption(
        "--seed", type=int, default=None, help="seed of every random choice, recorded in run.json (default: random)"
    )
    group.addoption("--run-id", default=None, help="id of this run, used in run.json and logs (default: a new one)")
    group.addoption("--dry-run", action="store_true", help="print every fault's plan and touch nothing")
    group.addoption(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"scenario profile: {DEFAULT_PROFILE} (minutes) or nightly (longer phases) (default: {DEFAULT_PROFILE})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name): a certification scenario; its result goes into run.json")
    config.addinivalue_line("markers", "target(*kinds): the scenario runs only on these kinds of target")
    check_target_options(config)
    run_id = config.getoption("--run-id") or new_run_id()
    option = config.getoption("--report-dir")
    report_dir = Path(option) if option else Path.cwd() / "runs" / run_id
    seed = config.getoption("--seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    record = RunRecord(run_id=run_id, seed=seed, started_at=time.time(), dry_run=config.getoption("--dry-run"))
    state = RunState(run_id, report_dir, record, seed, record.dry_run)
    config.stash[RUN_STATE] = state
    _OPEN_STATES.append(state)


@pytest.fixture(scope="session")
def stormgate_run(pytestconfig: pytest.Config) -> RunState:
    """State of this certification run: run id, seed, report folder and record."""
    return pytestconfig.stash[RUN_STATE]


@pytest.fixture(scope="session")
def stormgate_target(pytestconfig: pytest.Config, stormgate_run: RunState) -> Iterator[OpenedTarget]:
    """Provide the target to certify, opened from the options; a sandbox is started unless it is running."""
    with open_target(pytestconfig) as opened:
        stormgate_run.record.target = opened.target.name
        yield opened


@pytest.fixture
def certify(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    stormgate_run: RunState,
) -> Callable[[ScenarioSpec | str], ScenarioResult]:
    """Run a scenario (a spec or a YAML file name in scenarios/) and fail the test unless it passes."""

    def run(scenario: ScenarioSpec | str) -> ScenarioResult:
        spec = (
            scenario
            if isinstance(scenario, ScenarioSpec)
            else load_scenario(SCENARIO_DIR / scenario, profile=pytestconfig.getoption("--profile"))
        )
        # The target is opened only after the scenario validated, so a bad file starts nothing.
        stormgate_target: OpenedTarget = request.getfixturevalue("stormgate_target")

        context = RunContext(
            run_id=stormgate_run.run_id,
            seed=stormgate_run.seed,
            report_dir=stormgate_run.report_dir,
            ledger=Ledger(state_root() / "ledger.jsonl"),
            dry_run=stormgate_run.dry_run,
            policy=stormgate_target.policy,
        )
        prometheus = None
        if stormgate_target.prometheus_url:
            prometheus = PrometheusSource(
                stormgate_target.prometheus_url,
                scrape_interval_s=stormgate_target.scrape_interval_s,
                coverage_selector=stormgate_target.coverage_selector,
            )
        execution = ScenarioExecution(spec, stormgate_target.target, context, prometheus)

        if stormgate_run.dry_run:
            plan = execution.plan()
            pytest.skip(f"dry run of {spec.name}, nothing injected: {plan.describe()}")

        result = execution.run()
        stormgate_run.record.scenarios.append(result)
        stormgate_run.judged.add(request.node.nodeid)
        # JUnit XML carries these as <property> elements, so CI dashboards see the verdict.
        request.node.user_properties.append(("stormgate_verdict", result.verdict.value))
        for clock in result.clocks:
            request.node.user_properties.append((f"recovery_{clock.name}_s", clock.measured_s))

        if result.verdict == Verdict.FAIL:
            pytest.fail(f"Scenario {spec.name} FAILED:\n  " + "\n  ".join(result.reasons), pytrace=False)
        if result.verdict == Verdict.INCONCLUSIVE:
            pytest.fail(
                f"Scenario {spec.name} is INCONCLUSIVE (not a pass):\n  " + "\n  ".join(result.reasons), pytrace=False
            )
        return result

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A scenario marked for another kind of target cannot run on this one, so it is deselected.
    target = config.getoption("--target")
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("target")
        if marker is not None and target not in marker.args:
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
    config.stash[RUN_STATE].has_scenarios = any(item.get_closest_marker("scenario") for item in items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    state = item.config.stash[RUN_STATE]
    if report.failed and call.excinfo is not None and call.excinfo.errisinstance(REJECTED_BEFORE_RUN):
        # Bad input, not a platform that failed: the CLI exits with the usage code.
        state.record.usage_errors.append(f"{item.nodeid}: {call.excinfo.value}")
        return report
    # A scenario test that failed before its scenario produced a result (a sandbox that did
    # not start, an invalid scenario file) must still count against the run's verdict.
    if report.failed and item.get_closest_marker("scenario") and item.nodeid not in state.judged:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else report.longreprtext[-800:]
        state.record.errors.append(f"{item.nodeid} ({report.when}): {message}")
    return report


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    # pytest passes no config here, so the interruption is noted on every open run state.
    for state in _OPEN_STATES:
        state.record.errors.append(f"The run was interrupted: {excinfo.value}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(RUN_STATE, None)
    if state is None or not state.has_scenarios or session.config.option.collectonly:
        return
    state.record.finished_at = time.time()
    state.record.finish()
    state.record.write(state.report_dir)
    write_html(state.record, state.report_dir)
    append_history(state.record, state.report_dir.parent / "history.jsonl")
    latest = state.report_dir.parent / "latest"
    if state.report_dir.parent.name == "runs":
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(state.report_dir.name)
        except OSError as error:
            logger.warning("Could not point %s at %s: %s", latest, state.report_dir, error)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(RUN_STATE, None)
    if state is None or not state.has_scenarios or config.option.collectonly:
        return
    terminalreporter.write_sep("=", "stormgate verdict")
    for line in render_summary(state.record, state.report_dir / "run.json"):
        terminalreporter.write_line(line)
