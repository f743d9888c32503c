"""Recovery clocks of a Kubernetes workload, computed from watch events rather than by polling the API.

The platform has recovered when the workload has at least its desired number of ready pods
(Ready condition True, no deletionTimestamp), not counting the pods a fault killed. The desired
number is the Deployment's or StatefulSet's `spec.replicas` as the watch last saw it.
"""

from __future__ import annotations

import threading
from typing import Any

from chaos.targets.kube_watch import Informer, Observation, pod_state


def desired_replicas(workload: dict[str, Any] | None) -> int | None:
    """Return spec.replicas of a Deployment or StatefulSet (1 when unset, as the API defaults it)."""
    if workload is None:
        return None
    replicas = workload.get("spec", {}).get("replicas")
    return 1 if replicas is None else int(replicas)


class _ReadyPods:
    """Uids of ready and of terminating pods, updated per watch event in constant time."""

    def __init__(self, excluded: set[str]) -> None:
        self.excluded = excluded
        self.ready: set[str] = set()
        self.terminating: set[str] = set()

    def apply(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        item = new if new is not None else old
        if item is None:
            return
        uid = item.get("metadata", {}).get("uid", "")
        self.ready.discard(uid)
        self.terminating.discard(uid)
        if new is None:
            return
        state = pod_state(new)
        if state.terminating:
            self.terminating.add(uid)
        if state.counts_ready and uid not in self.excluded:
            self.ready.add(uid)


class WorkloadRecoveryProbe:
    """RecoveryProbe of a Kubernetes workload: latches the first moment every desired pod is ready again.

    `poll` reads state kept up to date by watch events and sends no request. Once recovered it
    stays True, so the recovery time is the first time the condition held after the fault.
    Without killed pods (a probe made before a drain, say) and with `require_loss`, recovery
    counts only after the probe saw fewer ready pods than desired, so a probe made before the
    disruption cannot latch at once. Without `require_loss` (a partition, which need not make
    pods unready), the probe latches as soon as every desired pod is ready, which may be at once.
    """

    def __init__(
        self,
        *,
        pods: Informer,
        workload: Informer | None,
        killed_uids: set[str],
        desired_fallback: int,
        require_loss: bool = True,
        started: Observation | None = None,
    ) -> None:
        self._pods = pods
        self._workload = workload
        self.killed_uids = set(killed_uids)
        self.desired_fallback = desired_fallback
        """Desired pods when no workload object is watched: the ready count before the fault."""
        self.started = started or Observation.now()
        self.recovered: Observation | None = None
        """When the watch delivered the event after which every desired pod was ready again."""
        self.loss_seen = bool(killed_uids) or not require_loss
        """Whether the probe saw the disruption; killed pods are excluded from the count, which is a loss."""
        self._state = "not evaluated yet"
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._counts = _ReadyPods(self.killed_uids)
        self._desired = desired_fallback
        # Listen first, then take the snapshot: an event in between is applied twice, which is harmless.
        pods.add_listener(self._on_pod_event)
        if workload is not None:
            workload.add_listener(self._on_workload_event)
        with self._lock:
            for pod in pods.objects():
                self._counts.apply(None, pod)
            self._desired = self._read_desired()
        self._evaluate(Observation.now())

    @property
    def duration_s(self) -> float | None:
        """Seconds from the start (the injection) to recovery; None while not recovered."""
        if self.recovered is None:
            return None
        return max(0.0, self.recovered.monotonic - self.started.monotonic)

    def poll(self) -> bool:
        return self.recovered is not None

    def wait(self, timeout_s: float) -> bool:
        """Block until recovered or `timeout_s` passes; return whether it recovered."""
        return self._event.wait(timeout_s)

    def describe(self) -> str:
        return self._state

    def close(self) -> None:
        """Stop following events; the latched result stays."""
        self._pods.remove_listener(self._on_pod_event)
        if self._workload is not None:
            self._workload.remove_listener(self._on_workload_event)

    def _on_pod_event(
        self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None, observed: Observation
    ) -> None:
        with self._lock:
            self._counts.apply(old, new)
        self._evaluate(observed)

    def _on_workload_event(
        self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None, observed: Observation
    ) -> None:
        with self._lock:
            self._desired = self._read_desired()
        self._evaluate(observed)

    def _read_desired(self) -> int:
        if self._workload is None:
            return self.desired_fallback
        objects = self._workload.objects()
        desired = desired_replicas(objects[0] if objects else None)
        return self.desired_fallback if desired is None else desired

    def _evaluate(self, observed: Observation) -> None:
        with self._lock:
            if self.recovered is not None:
                return
            ready, desired = len(self._counts.ready), self._desired
            self._state = f"{ready} of {desired} desired pods ready ({len(self._counts.terminating)} terminating)"
            if ready < desired:
                self.loss_seen = True
            if not self.loss_seen:
                self._state += ", no loss seen yet"
            elif desired > 0 and ready >= desired:
                self.recovered = observed
                self._event.set()


class ScaleOutClock:
    """Time from a start (a flood's injection) until added replicas are ready.

    Two moments are latched: `scaled` when the workload's spec.replicas first exceeds the
    replicas at the start (the HorizontalPodAutoscaler's decision, or any other scaler's), and
    `ready` when at least that many pods are ready afterwards.
    """

    def __init__(self, *, pods: Informer, workload: Informer, started: Observation | None = None) -> None:
        self._pods = pods
        self._workload = workload
        self.started = started or Observation.now()
        objects = workload.objects()
        self.initial_replicas = desired_replicas(objects[0] if objects else None) or 0
        self.target_replicas = self.initial_replicas
        self.scaled: Observation | None = None
        self.ready: Observation | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._counts = _ReadyPods(set())
        pods.add_listener(self._on_pod_event)
        workload.add_listener(self._on_workload_event)
        with self._lock:
            for pod in pods.objects():
                self._counts.apply(None, pod)

    @property
    def decision_s(self) -> float | None:
        """Seconds from the start until the workload was scaled out."""
        return None if self.scaled is None else self.scaled.monotonic - self.started.monotonic

    @property
    def scale_out_s(self) -> float | None:
        """Seconds from the start until the added replicas were ready."""
        return None if self.ready is None else self.ready.monotonic - self.started.monotonic

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def close(self) -> None:
        self._pods.remove_listener(self._on_pod_event)
        self._workload.remove_listener(self._on_workload_event)

    def _on_pod_event(
        self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None, observed: Observation
    ) -> None:
        with self._lock:
            self._counts.apply(old, new)
        self._evaluate(observed)

    def _on_workload_event(
        self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None, observed: Observation
    ) -> None:
        desired = desired_replicas(new) or 0
        with self._lock:
            if desired > self.initial_replicas:
                self.target_replicas = max(self.target_replicas, desired)
                if self.scaled is None:
                    self.scaled = observed
        self._evaluate(observed)

    def _evaluate(self, observed: Observation) -> None:
        with self._lock:
            if self.ready is not None or self.scaled is None:
                return
            if len(self._counts.ready) >= self.target_replicas:
                self.ready = observed
                self._event.set()
