"""Watch-fed caches of pods and workloads, and the recovery clocks computed from them.

An `Informer` lists the objects once, then follows a watch from the list's resourceVersion.
The API server ends a watch whose resourceVersion is too old (compacted etcd history) with
410 Gone. The informer then lists again and turns the difference into the events it missed.
So a pod that became Ready during the gap is still seen becoming Ready, and a recovery is not
lost. Its time is then the time of the re-list, and the informer counts re-lists in `relists`.

Each event carries the monotonic and the wall time at which this process received it. The
wall time is kept to the millisecond.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from chaos.targets.kube_client import KubeApiError, api_error, read_json

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 60
"""Server-side length of one watch request; the informer reopens it from the last resourceVersion."""
READ_TIMEOUT_MARGIN_S = 15.0
"""Read timeout beyond WATCH_TIMEOUT_S, after which a silent connection counts as broken."""
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Pauses before reopening a failed watch; the last one repeats until the informer stops."""
HTTP_GONE = 410


@dataclass(frozen=True)
class Observation:
    """When this process received an event: monotonic seconds for durations, UTC epoch seconds for reports."""

    monotonic: float
    wall: float

    @classmethod
    def now(cls) -> Observation:
        return cls(monotonic=time.monotonic(), wall=round(time.time(), 3))

    @property
    def iso(self) -> str:
        """Wall time in UTC ISO 8601 with milliseconds."""
        return datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PodState:
    """The parts of a pod that recovery depends on."""

    name: str
    uid: str
    node: str
    ready: bool
    """Ready condition is True in the pod's status."""
    terminating: bool
    """The pod has a deletionTimestamp, so it is shutting down, whatever its Ready condition is."""
    created_at: float
    """creationTimestamp in UTC epoch seconds (the API stores it to the second)."""
    phase: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    pod_ip: str = ""

    @property
    def counts_ready(self) -> bool:
        """Whether the pod counts as a ready instance: Ready and not terminating."""
        return self.ready and not self.terminating


def parse_time(value: str | None) -> float:
    """Turn an RFC 3339 timestamp of the API into UTC epoch seconds; 0.0 when absent."""
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pod_state(pod: dict[str, Any]) -> PodState:
    metadata = pod.get("metadata", {})
    status = pod.get("status", {})
    conditions = status.get("conditions") or []
    ready = any(item.get("type") == "Ready" and item.get("status") == "True" for item in conditions)
    return PodState(
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        node=pod.get("spec", {}).get("nodeName") or "",
        ready=ready,
        terminating=metadata.get("deletionTimestamp") is not None,
        created_at=parse_time(metadata.get("creationTimestamp")),
        phase=status.get("phase") or "",
        labels=dict(metadata.get("labels") or {}),
        pod_ip=status.get("podIP") or "",
    )


Listener = Callable[[str, dict[str, Any] | None, dict[str, Any] | None, Observation], None]
"""Called as listener(event_type, old_object, new_object, observation) from the informer's thread.

The informer's lock is not held during the call, so a listener may read other informers
without a lock-order deadlock between two informer threads."""


class _WatchExpired(Exception):
    """The watch's resourceVersion is older than the server's history (410 Gone)."""


class Informer:
    """A cache of the objects one list call returns, kept current by a watch in a daemon thread."""

    def __init__(
        self, name: str, list_call: Callable[..., Any], *, watch_timeout_s: int = WATCH_TIMEOUT_S, **list_kwargs: Any
    ) -> None:
        self.name = name
        """What the informer watches, for logs, such as "pods app=web in shop"."""
        self._list_call = list_call
        self._list_kwargs = list_kwargs
        self._watch_timeout_s = watch_timeout_s
        self._objects: dict[str, dict[str, Any]] = {}
        self._resource_version = ""
        self._condition = threading.Condition()
        self._listeners: list[Listener] = []
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self.relists = 0
        """Lists after the first one, each caused by a 410 Gone."""
        self.events = 0
        """Watch events applied, bookmarks excluded, synthesized re-list events included."""

    # ----- lifecycle -----

    def start(self) -> None:
        """List once, so the cache is complete when this returns, then follow the watch in the background."""
        self._relist(initial=True)
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        deadline = time.monotonic() + timeout_s
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            # The watch response may appear after the first try (a request that was still being
            # sent), so the shutdown repeats until the thread ends.
            self._shutdown_response()
            self._thread.join(0.1)
        if self._thread is not None and self._thread.is_alive():
            logger.error("Informer %s did not stop within %.0f s.", self.name, timeout_s)

    def _shutdown_response(self) -> None:
        response = self._response
        if response is None:
            return
        # shutdown() unblocks a read in another thread (urllib3 >= 2.3); close() alone may not.
        shutdown = getattr(response, "shutdown", None)
        if callable(shutdown):
            shutdown()
        response.close()

    # ----- reading -----

    def objects(self) -> list[dict[str, Any]]:
        with self._condition:
            return list(self._objects.values())

    def add_listener(self, listener: Listener) -> None:
        with self._condition:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._condition:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def wait_until(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float) -> bool:
        """Block until `predicate(objects)` is True after some event, or `timeout_s` passes; return the last value."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while not predicate(list(self._objects.values())):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0 or self._stopped.is_set():
                    return False
                self._condition.wait(remaining_s)
            return True

    # ----- the watch loop -----

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                self._watch_once()
                failures = 0
            except _WatchExpired:
                logger.warning(
                    "Watch of %s expired at resourceVersion %s (410 Gone); listing again.",
                    self.name,
                    self._resource_version,
                )
                self._retry(lambda: self._relist(initial=False))
            except AttributeError:
                # http.client raises this when stop() closes the response under a blocked read.
                if self._stopped.is_set():
                    break
                raise
            except (ApiException, KubeApiError, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                if self._stopped.is_set():
                    break
                delay_s = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                logger.warning("Watch of %s failed (%s); reopening in %.1f s.", self.name, error, delay_s)
                self._stopped.wait(delay_s)

    def _retry(self, action: Callable[[], None]) -> None:
        for delay_s in (*RETRY_DELAYS_S, None):
            if self._stopped.is_set():
                return
            try:
                action()
                return
            except (ApiException, KubeApiError, urllib3.exceptions.HTTPError, OSError) as error:
                if delay_s is None:
                    logger.error(
                        "Listing %s failed %d times; the watch goes on from its old state: %s",
                        self.name,
                        len(RETRY_DELAYS_S) + 1,
                        error,
                    )
                    return
                logger.warning("Listing %s failed (%s); trying again in %.1f s.", self.name, error, delay_s)
                self._stopped.wait(delay_s)

    def _watch_once(self) -> None:
        response = self._list_call(
            **self._list_kwargs,
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _preload_content=False,
            _request_timeout=(10.0, self._watch_timeout_s + READ_TIMEOUT_MARGIN_S),
        )
        self._response = response
        try:
            for line in _lines(response):
                if self._stopped.is_set():
                    return
                self._handle(json.loads(line))
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _handle(self, event: dict[str, Any]) -> None:
        observed = Observation.now()
        kind = event.get("type", "")
        item = event.get("object") or {}
        if kind == "ERROR":
            code = int(item.get("code") or 0)
            if code == HTTP_GONE:
                raise _WatchExpired()
            raise KubeApiError(f"Watch of {self.name} returned an error: {item.get('message', item)}", status=code)
        version = item.get("metadata", {}).get("resourceVersion", "")
        if kind == "BOOKMARK":
            self._resource_version = version or self._resource_version
            return
        with self._condition:
            uid = item.get("metadata", {}).get("uid", "")
            old = self._objects.get(uid)
            new: dict[str, Any] | None = None
            if kind == "DELETED":
                self._objects.pop(uid, None)
            else:
                self._objects[uid] = item
                new = item
            self._resource_version = version or self._resource_version
            self.events += 1
            self._condition.notify_all()
        self._call_listeners([(kind, old, new)], observed)

    def _relist(self, *, initial: bool) -> None:
        try:
            response = self._list_call(**self._list_kwargs, _preload_content=False, _request_timeout=30.0)
        except ApiException as error:
            raise api_error(error, f"Listing {self.name}") from error
        body = read_json(response)
        observed = Observation.now()
        fresh = {item["metadata"]["uid"]: item for item in body.get("items") or []}
        replayed: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
        with self._condition:
            previous = self._objects
            self._objects = fresh
            self._resource_version = body.get("metadata", {}).get("resourceVersion", "")
            if not initial:
                self.relists += 1
                # Replay what the gap hid, so listeners see every pod that left or changed.
                for uid, item in previous.items():
                    if uid not in fresh:
                        replayed.append(("DELETED", item, None))
                for uid, item in fresh.items():
                    old = previous.get(uid)
                    if old is None:
                        replayed.append(("ADDED", None, item))
                    elif old["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                        replayed.append(("MODIFIED", old, item))
                self.events += len(replayed)
            self._condition.notify_all()
        self._call_listeners(replayed, observed)

    def _call_listeners(
        self, changes: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]], observed: Observation
    ) -> None:
        with self._condition:
            listeners = list(self._listeners)
        for kind, old, new in changes:
            for listener in listeners:
                listener(kind, old, new, observed)


def _lines(response: Any) -> Iterator[str]:
    for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
        if line:
            yield line
