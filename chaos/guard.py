"""FaultGuard: inject a fault for the length of a `with` block and revert it on every way out.

    with FaultGuard(ledger, target, fault, plan, run_id=run_id, timeline=timeline) as guard:
        ...                     # the fault is injected, recorded and verified here
        guard.wait(timeout_s)   # for lasting faults: True once the effect has ended

Ways out that revert: the end of the block, an exception (pytest-timeout's signal method
raises one), SIGINT and SIGTERM (handlers installed for the block's duration, main thread
only), and interpreter exit (atexit). After a SIGKILL, or `os._exit` as pytest-timeout's
thread method uses, nothing in the process runs: the ledger entry stays open and the next
run, or `stormgate cleanup`, reverts it.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from chaos.faults.base import Fault, FaultPlan, InjectResult, RevertResult, VerifyResult
from chaos.ledger import Ledger, LedgerEntry
from chaos.safety import DEFAULT_POLICY, SafetyPolicy, check_target_allowed
from chaos.targets.base import Target
from reports.timeline import Timeline

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_active_guards: set[FaultGuard] = set()
_registry_lock = threading.Lock()


def _revert_at_exit() -> None:
    with _registry_lock:
        guards = list(_active_guards)
    for guard in guards:
        guard.revert(reason="interpreter exit")


atexit.register(_revert_at_exit)


class FaultGuard:
    """Record, inject and verify a planned fault on entry; revert it and mark the ledger on exit.

    With `dry_run` the guard prints the plan and touches nothing: no ledger entry, no injection.
    With `verify=False` the caller calls `guard.verify()` itself, for example after starting a
    recovery clock. A signal that arrives while the guard injects or reverts is held until that
    step ends, so a revert never races a half-applied change.
    """

    def __init__(
        self,
        ledger: Ledger,
        target: Target,
        fault: Fault[Any],
        plan: FaultPlan,
        *,
        run_id: str,
        timeline: Timeline | None = None,
        dry_run: bool = False,
        verify: bool = True,
        policy: SafetyPolicy = DEFAULT_POLICY,
    ) -> None:
        self.ledger = ledger
        self.target = target
        self.fault = fault
        self.plan = plan
        self.run_id = run_id
        self.timeline = timeline
        self.dry_run = dry_run
        self.verify_on_enter = verify
        self.policy = policy
        self.inject_result: InjectResult | None = None
        self.verify_result: VerifyResult | None = None
        self.revert_result: RevertResult | None = None
        self.reverted_by: str | None = None
        """Trigger of the revert: "exit", "exception <type>", "interrupt", "SIGINT", "SIGTERM" or "interpreter exit"."""
        self._entry: LedgerEntry | None = None
        self._busy = False
        self._pending_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._handlers_installed = False
        self._lock = threading.RLock()

    # ----- entry -----

    def __enter__(self) -> FaultGuard:
        check_target_allowed(self.target.name, self.policy)
        self._event("fault.plan", plan=self.plan.model_dump(mode="json"), dry_run=self.dry_run)
        if self.dry_run:
            print(f"dry run, not injected: {self.plan.describe()}", flush=True)
            logger.info("Run %s: dry run of %s; nothing is touched.", self.run_id, self.plan.fault_id)
            return self

        self._install_handlers()
        with _registry_lock:
            _active_guards.add(self)
        self.fault.timeline = self.timeline
        try:
            self._busy = True
            self._entry = self.ledger.record_injecting(
                fault_id=self.plan.fault_id,
                run_id=self.run_id,
                target=self.target.name,
                kind=self.plan.kind,
                plan=self.plan.model_dump(mode="json"),
            )
            self.inject_result = self.fault.inject(self.target, self.plan)
            self._busy = False
            self._event("fault.inject", touched=self.inject_result.touched)
            logger.info(
                "Run %s: injected %s on %s: %s.",
                self.run_id,
                self.plan.fault_id,
                self.target.name,
                ", ".join(self.inject_result.touched) or "nothing listed",
            )
            self._raise_pending_signal()
            if self.verify_on_enter:
                self.verify()
        except BaseException as error:
            self._busy = False
            self.revert(reason=_reason_of(error))
            raise
        return self

    def verify(self) -> VerifyResult:
        """Verify the injection; FaultNotEffective propagates, and leaving the block reverts."""
        self.verify_result = self.fault.verify(self.target, self.plan)
        self._event("fault.verify", effective=True, evidence=self.verify_result.evidence)
        return self.verify_result

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; True once a lasting fault's effect has ended (see Fault.wait)."""
        if self.dry_run:
            return True
        return self.fault.wait(timeout_s)

    @property
    def active(self) -> bool:
        return not self.dry_run and self.reverted_by is None and self.fault.active

    # ----- exit -----

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.dry_run:
            return
        self.revert(reason="exit" if exc is None else _reason_of(exc))
        self._raise_pending_signal()

    def revert(self, *, reason: str) -> RevertResult | None:
        """Revert once and mark the ledger entry; later calls return the first result."""
        with self._lock:
            if self.reverted_by is not None or self.dry_run:
                return self.revert_result
            self._busy = True
            try:
                self.revert_result = self.fault.revert(self.target, self.plan)
                self.reverted_by = reason
                if self._entry is not None:
                    self.ledger.record_reverted(self._entry)
            except BaseException as error:
                # The ledger entry stays open, so the next run or `stormgate cleanup` retries the revert.
                logger.error(
                    "Run %s: revert of %s on %s (%s) failed: %s", self.run_id, self.plan.fault_id, self.target.name,
                    reason, error,
                )  # fmt: skip
                raise
            finally:
                self._busy = False
                self._restore_handlers()
                with _registry_lock:
                    _active_guards.discard(self)
        self._event("fault.revert", reason=reason, undone=self.revert_result.undone)
        logger.info(
            "Run %s: reverted %s on %s (%s): %s.",
            self.run_id,
            self.plan.fault_id,
            self.target.name,
            reason,
            ", ".join(self.revert_result.undone) or "nothing left to undo",
        )
        return self.revert_result

    # ----- signals -----

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "Run %s: guard of %s runs outside the main thread, so SIGINT and SIGTERM do not revert it; "
                "the exit of the block, atexit and the next run's cleanup still do.",
                self.run_id,
                self.plan.fault_id,
            )
            return
        for signum in HANDLED_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        self._handlers_installed = True

    def _restore_handlers(self) -> None:
        # The previous handlers stay in _previous_handlers: a held signal is handed on to them later.
        if not self._handlers_installed or threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous_handlers.items():
            # A handler installed after ours (the load reaper's, say) calls ours in its chain;
            # replacing it would drop it, so it stays, and ours then only hands the signal on.
            if signal.getsignal(signum) == self._on_signal:
                signal.signal(signum, handler)
        self._handlers_installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        logger.warning("Run %s: %s received; reverting %s.", self.run_id, name, self.plan.fault_id)
        if self._busy:
            # Injecting or reverting right now: finish that step, then act on the signal.
            self._pending_signal = signum
            return
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.revert(reason=name)
        _chain(previous, signum, frame)

    def _raise_pending_signal(self) -> None:
        signum = self._pending_signal
        if signum is None:
            return
        self._pending_signal = None
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.revert(reason=signal.Signals(signum).name)
        _chain(previous, signum, None)

    # ----- timeline -----

    def _event(self, kind: str, **details: Any) -> None:
        if self.timeline is not None:
            self.timeline.add(kind, fault_id=self.plan.fault_id, **details)


def _chain(previous: Any, signum: int, frame: FrameType | None) -> None:
    """Hand the signal on after the revert, so that the program (pytest, too) still stops."""
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action of SIGTERM would end the process at once and skip the teardown of
    # pytest fixtures. KeyboardInterrupt unwinds the stack, and pytest stops the session.
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received; faults were reverted")


def _reason_of(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupt"
    return f"exception {type(error).__name__}"
