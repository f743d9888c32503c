"""The Kubernetes target: pods of one workload in one namespace of an allowlisted cluster.

    target = KubernetesTarget.from_options(KubernetesOptions(
        context="staging", namespace="shop", selector="app=web", workload="deployment/web",
        allowed_contexts=("staging",), allowed_namespaces=("shop",),
    ))

The target watches the workload's pods and its Deployment or StatefulSet from the moment it
starts, so recovery clocks and kill verification follow watch events and send no request of
their own. Pods labelled `app.kubernetes.io/part-of: stormgate` (the harness's load generators
and monitoring) are excluded by the label selector itself, so they are never even listed.
"""

from __future__ import annotations

import logging
import signal
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chaos.targets.base import Instance
from chaos.targets.kube_cleanup import clean_cluster
from chaos.targets.kube_client import KubeConnection, api_error, connect, read_json
from chaos.targets.kube_recovery import ScaleOutClock, WorkloadRecoveryProbe, desired_replicas
from chaos.targets.kube_safety import (
    HARNESS_PART_OF,
    PART_OF_LABEL,
    KubeSafety,
    is_harness_object,
    protect_selector,
)
from chaos.targets.kube_watch import Informer, Observation, PodState, pod_state
from stormgate.errors import UsageError

logger = logging.getLogger(__name__)

WorkloadKind = Literal["Deployment", "StatefulSet"]


class KubernetesOptions(BaseModel):
    """Settings of a Kubernetes target, as the CLI or a scenario gives them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context: str
    """Kubeconfig context to use, or "in-cluster" for the pod's service account."""
    namespace: str
    selector: str
    """Label selector of the workload's pods, such as "app=web"."""
    workload: str = ""
    """Deployment or StatefulSet whose spec.replicas is the desired pod count: "web", "deployment/web" or
    "statefulset/db". Empty: the desired count is the number of ready pods when a probe starts."""
    load_url: str = ""
    """Service or Ingress URL that the load generator sends requests to."""
    prometheus_url: str = ""
    allowed_contexts: tuple[str, ...] = Field(min_length=1)
    allowed_namespaces: tuple[str, ...] = Field(min_length=1)
    kubeconfig: Path | None = None
    """Kubeconfig file; None reads ~/.kube/config (KUBECONFIG is not consulted, so that it cannot redirect a run)."""
    allow_node_faults: bool = False
    """Allow cordon and drain of nodes, which affects every workload on them."""

    @field_validator("workload")
    @classmethod
    def _check_workload(cls, value: str) -> str:
        if value and "/" in value and value.split("/", 1)[0].lower() not in ("deployment", "statefulset"):
            raise ValueError(f"workload {value!r} must be NAME, deployment/NAME or statefulset/NAME")
        return value

    @property
    def workload_kind(self) -> WorkloadKind:
        if self.workload.lower().startswith("statefulset/"):
            return "StatefulSet"
        return "Deployment"

    @property
    def workload_name(self) -> str:
        return self.workload.split("/", 1)[-1]

    @property
    def safety(self) -> KubeSafety:
        return KubeSafety(allowed_contexts=self.allowed_contexts, allowed_namespaces=self.allowed_namespaces)


class PodInstance(Instance):
    """A pod of the workload; its uid distinguishes it from a replacement that has the same name."""

    uid: str
    namespace: str
    node: str = ""
    ready: bool = False


class KubernetesTarget:
    """Fault target backed by a workload's pods; implements the Target protocol."""

    def __init__(self, connection: KubeConnection, options: KubernetesOptions) -> None:
        safety = options.safety
        safety.check_context(connection.context)
        safety.check_namespace(options.namespace)
        self.connection = connection
        self.options = options
        self.safety = safety
        self.namespace = options.namespace
        self.selector = protect_selector(options.selector)
        """The workload's selector plus a term that excludes the harness's pods."""
        self.name = f"kubernetes/{connection.context}/{options.namespace}"
        self.load_url = options.load_url
        self.prometheus_url = options.prometheus_url
        host = urllib.parse.urlsplit(options.load_url).hostname if options.load_url else None
        self.allowed_load_hosts: tuple[str, ...] = (host,) if host else ()
        """The host of --load-url, named by the user, is the only host outside loopback that load may go to."""
        self.allow_node_faults = options.allow_node_faults
        self._pods: Informer | None = None
        self._workload: Informer | None = None

    @classmethod
    def from_options(cls, options: KubernetesOptions | None = None, **settings: Any) -> KubernetesTarget:
        """Check the allowlists, connect, and return the target; give options or their fields as keywords."""
        if options is None:
            options = KubernetesOptions(**settings)
        elif settings:
            options = options.model_copy(update=settings)
        connection = connect(context=options.context, safety=options.safety, kubeconfig=options.kubeconfig)
        return cls(connection, options)

    # ----- watches -----

    def start(self) -> None:
        """Start the watches of the pods and the workload; instances() and probes need them. Idempotent."""
        if self._pods is not None:
            return
        core = self.connection.core
        pods = Informer(
            f"pods {self.options.selector} in {self.namespace}",
            core.list_namespaced_pod,
            namespace=self.namespace,
            label_selector=self.selector,
        )
        workload = self._workload_informer()
        try:
            pods.start()
            if workload is not None:
                workload.start()
        except ApiException as error:
            raise api_error(error, f"Listing pods {self.selector} in {self.namespace}") from error
        self._pods, self._workload = pods, workload

    def _workload_informer(self) -> Informer | None:
        if not self.options.workload:
            return None
        apps = self.connection.apps
        list_call = (
            apps.list_namespaced_stateful_set
            if self.options.workload_kind == "StatefulSet"
            else apps.list_namespaced_deployment
        )
        return Informer(
            f"{self.options.workload_kind} {self.options.workload_name} in {self.namespace}",
            list_call,
            namespace=self.namespace,
            field_selector=f"metadata.name={self.options.workload_name}",
        )

    def close(self) -> None:
        """Stop the watches and close the connection."""
        for informer in (self._pods, self._workload):
            if informer is not None:
                informer.stop()
        self._pods = self._workload = None
        self.connection.close()

    @property
    def pods(self) -> Informer:
        self.start()
        assert self._pods is not None
        return self._pods

    @property
    def workload(self) -> Informer | None:
        self.start()
        return self._workload

    def pod_states(self) -> list[PodState]:
        """Return every pod of the workload as the watch last saw it, terminating ones included."""
        states = [pod_state(pod) for pod in self.pods.objects()]
        # The selector already excludes the harness's pods; this check guards against a changed selector.
        return sorted((state for state in states if not is_harness_object(state.labels)), key=lambda s: s.name)

    def desired_replicas(self) -> int | None:
        workload = self.workload
        if workload is None:
            return None
        objects = workload.objects()
        return desired_replicas(objects[0] if objects else None)

    # ----- Target protocol -----

    def instances(self) -> list[Instance]:
        """Return the running pods that are not terminating, by name."""
        return [
            PodInstance(
                name=state.name,
                uid=state.uid,
                namespace=self.namespace,
                node=state.node,
                ready=state.ready,
                started_at=state.created_at,
                host=state.pod_ip,
            )
            for state in self.pod_states()
            if state.phase == "Running" and not state.terminating
        ]

    def protected_instances(self) -> set[str]:
        """Return the names of the harness's pods in the namespace."""
        try:
            response = self.connection.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{PART_OF_LABEL}={HARNESS_PART_OF}",
                _preload_content=False,
            )
        except ApiException as error:
            raise api_error(error, f"Listing the harness's pods in {self.namespace}") from error
        return {item["metadata"]["name"] for item in read_json(response).get("items") or []}

    def kill(self, instance: Instance, sig: signal.Signals) -> None:
        """Delete the pod: SIGKILL deletes with a grace period of 0, any other signal with the pod's own."""
        grace_period_s = 0 if sig == signal.SIGKILL else None
        self.delete_pod(instance.name, uid=getattr(instance, "uid", None), grace_period_s=grace_period_s)

    def delete_pod(self, name: str, *, uid: str | None, grace_period_s: int | None, run_id: str = "") -> bool:
        """Delete one pod, only if it still has this uid; return False when it was already gone or replaced."""
        options = client.V1DeleteOptions(
            grace_period_seconds=grace_period_s,
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self.connection.core.delete_namespaced_pod(name, self.namespace, body=options)
        except ApiException as error:
            # 404: already gone; 409: the uid precondition failed, so the name belongs to a replacement.
            if error.status in (404, 409):
                logger.info("Run %s: pod %s/%s was already gone or replaced.", run_id, self.namespace, name)
                return False
            raise api_error(error, f"Deleting pod {self.namespace}/{name}") from error
        logger.info(
            "Run %s: deleted pod %s/%s (uid %s, grace period %s s) in %s.",
            run_id,
            self.namespace,
            name,
            uid,
            "default" if grace_period_s is None else grace_period_s,
            self.name,
        )
        return True

    def instance_gone(self, instance: Instance) -> bool:
        """Return True when this exact pod (by uid) has disappeared, whether or not a replacement has its name."""
        uid = getattr(instance, "uid", None)
        for state in self.pod_states():
            if (uid and state.uid == uid) or (not uid and state.name == instance.name):
                return False
        return True

    def wait_gone(self, uids: set[str], timeout_s: float) -> bool:
        """Block until no pod has any of these uids, following the watch; return False on timeout."""
        return self.pods.wait_until(lambda pods: not any(pod["metadata"]["uid"] in uids for pod in pods), timeout_s)

    def recovery_probe(
        self, killed: list[Instance], *, expect_restart: bool = True, started: Observation | None = None
    ) -> WorkloadRecoveryProbe:
        """Return a probe that latches when the workload has its desired ready pods again.

        With `expect_restart` (kills, drains) the touched pods never count, only their
        replacements do, and without touched pods the probe waits to see a loss first. Without
        it (a partition leaves the pods in place) every ready pod counts, touched ones included.
        """
        if not expect_restart:
            return WorkloadRecoveryProbe(
                pods=self.pods,
                workload=self.workload,
                killed_uids=set(),
                desired_fallback=sum(1 for state in self.pod_states() if state.counts_ready),
                require_loss=False,
                started=started,
            )
        killed_uids = {uid for uid in (getattr(instance, "uid", "") for instance in killed) if uid}
        if not killed_uids:
            names = {instance.name for instance in killed}
            killed_uids = {state.uid for state in self.pod_states() if state.name in names}
        ready_before = sum(1 for state in self.pod_states() if state.counts_ready)
        return WorkloadRecoveryProbe(
            pods=self.pods,
            workload=self.workload,
            killed_uids=killed_uids,
            desired_fallback=ready_before,
            started=started,
        )

    def scale_out_clock(self, *, started: Observation | None = None) -> ScaleOutClock:
        """Return a clock of the time until replicas added after `started` are ready; needs a workload."""
        workload = self.workload
        if workload is None:
            raise UsageError(
                f"A scale-out clock on {self.name} needs the workload's name; give workload=deployment/NAME"
            )
        return ScaleOutClock(pods=self.pods, workload=workload, started=started)

    def ensure_running(self, instance_name: str) -> bool:
        # The workload's controller replaces deleted pods; the harness never creates pods itself.
        return False


def cleanup_kubernetes(
    *,
    context: str,
    namespaces: list[str] | None,
    kubeconfig: Path | None = None,
    allowed_contexts: tuple[str, ...] | None = None,
    expired_only: bool = False,
    nodes: bool = True,
) -> list[str]:
    """Delete every stormgate-labelled NetworkPolicy in `namespaces` (None: all) and uncordon stormgate's nodes.

    Return one line per change. The cleanup touches only objects that carry stormgate's marks,
    so the context allowlist defaults to the given context. Nodes are skipped, with a log
    line, when the credentials may not list them.
    """
    safety = KubeSafety(
        allowed_contexts=allowed_contexts or (context,),
        allowed_namespaces=tuple(namespaces or ("*",)),
    )
    connection = connect(context=context, safety=safety, kubeconfig=kubeconfig)
    try:
        lines = clean_cluster(connection, namespaces, expired_only=expired_only, nodes=nodes)
    finally:
        connection.close()
    for line in lines:
        logger.warning("Cleanup on kube context %s: %s (left by an earlier run).", context, line)
    return lines
