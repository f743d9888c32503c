"""Connection to a Kubernetes API server through a kubeconfig context or in-cluster config, with request counts.

In-cluster, the service-account token is a projected file that the kubelet rotates (by
default it expires after one hour). The client re-reads the file before a request whenever
its modification time changed, so a run longer than the token's lifetime keeps working.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse
from kubernetes.config.config_exception import ConfigException

from chaos.targets.kube_safety import IN_CLUSTER_CONTEXT, KubeSafety
from stormgate.errors import StormgateError, TargetUnreachable, UsageError

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONNECTION_POOL_SIZE = 32
"""HTTP connections kept per API server: two long watches plus a pod kill's parallel deletes."""


class KubeApiError(StormgateError, RuntimeError):
    """The API server rejected a request or returned an unexpected status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class KubeForbidden(KubeApiError, PermissionError):
    """The API server returned 403 because the harness's RBAC role lacks a verb."""


def api_error(error: ApiException, action: str) -> KubeApiError:
    """Turn an ApiException into a KubeApiError whose message names the action and the server's reason."""
    status = int(error.status or 0)
    reason = _server_message(error)
    if status == 403:
        return KubeForbidden(
            f"Forbidden: {action} was rejected with 403 ({reason}); grant the verb in the harness's Role "
            "(see deploy/rbac.yaml) or run with a context that has it",
            status=status,
        )
    return KubeApiError(f"{action} failed with HTTP {status}: {reason}", status=status)


def _server_message(error: ApiException) -> str:
    body = error.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        # Server bodies can be long; the first 300 characters carry the reason.
        return str(message or body)[:300]
    return str(error.reason or "no reason given")


class CountingApiClient(client.ApiClient):
    """ApiClient that counts every HTTP request it sends, by method, including watch requests."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self._count_lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        """Requests sent so far by HTTP method, such as {"GET": 12, "DELETE": 3}."""

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> RESTResponse:
        with self._count_lock:
            self.requests[method.upper()] += 1
        return super().call_api(method, url, header_params, body, post_params, _request_timeout=_request_timeout)

    @property
    def request_total(self) -> int:
        with self._count_lock:
            return sum(self.requests.values())


@dataclass
class TokenFileReloader:
    """Re-reads a bearer token file before a request when the file changed since the last read."""

    path: Path
    _mtime_ns: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    reloads: int = 0
    """Number of times the token was read, the first read included."""

    def __call__(self, configuration: client.Configuration) -> None:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except OSError as error:
            # Keep the token already loaded: a rotation replaces the file atomically, so a
            # missing file is a passing state, and the server rejects the token once it expires.
            logger.warning(
                "Service-account token file %s is unreadable, keeping the loaded token: %s", self.path, error
            )
            return
        with self._lock:
            if mtime_ns == self._mtime_ns:
                return
            token = self.path.read_text(encoding="ascii").strip()
            if not token:
                logger.warning("Service-account token file %s is empty, keeping the loaded token.", self.path)
                return
            configuration.api_key["BearerToken"] = token
            configuration.api_key_prefix["BearerToken"] = "Bearer"
            self._mtime_ns = mtime_ns
            self.reloads += 1
            if self.reloads > 1:
                logger.info("Reloaded the rotated service-account token from %s.", self.path)


@dataclass
class KubeConnection:
    """An authenticated API client and the context it was made from."""

    context: str
    api_client: CountingApiClient
    default_namespace: str | None = None
    """Namespace of the kubeconfig context, or the pod's own namespace in-cluster."""
    token_reloader: TokenFileReloader | None = None

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client)

    @property
    def autoscaling(self) -> client.AutoscalingV2Api:
        return client.AutoscalingV2Api(self.api_client)

    @property
    def request_total(self) -> int:
        return self.api_client.request_total

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]


def connect(
    *,
    context: str | None,
    safety: KubeSafety,
    kubeconfig: Path | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> KubeConnection:
    """Connect with an explicit kubeconfig context, or with in-cluster config when the context is "in-cluster".

    The context is checked against the allowlist before any request. A kubeconfig's
    current-context is never used implicitly, so a changed default cannot redirect faults.
    """
    if not context:
        raise UsageError(
            "No kube context given; name the context explicitly (--kube-context NAME, or 'in-cluster' "
            "inside a pod), because stormgate never falls back to the kubeconfig's current-context"
        )
    safety.check_context(context)
    if context == IN_CLUSTER_CONTEXT:
        return _connect_in_cluster(service_account_dir, dict(environ if environ is not None else os.environ))
    return _connect_kubeconfig(context, kubeconfig)


def _connect_kubeconfig(context: str, kubeconfig: Path | None) -> KubeConnection:
    path = str(kubeconfig) if kubeconfig is not None else None
    try:
        contexts, _current = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as error:
        raise UsageError(f"The kubeconfig {path or '~/.kube/config'} cannot be read: {error}") from error
    by_name = {entry["name"]: entry for entry in contexts or []}
    if context not in by_name:
        raise UsageError(
            f"Kube context {context!r} is not in the kubeconfig {path or '~/.kube/config'} "
            f"(it has {', '.join(sorted(by_name)) or 'no context'}); check --kube-context"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=context, client_configuration=configuration
        )
    except (ConfigException, OSError) as error:
        raise TargetUnreachable(f"Loading kube context {context!r} failed: {error}") from error
    namespace = by_name[context].get("context", {}).get("namespace")
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    logger.info("Connected to kube context %s at %s.", context, configuration.host)
    return KubeConnection(context=context, api_client=CountingApiClient(configuration), default_namespace=namespace)


def _connect_in_cluster(service_account_dir: Path, environ: dict[str, str]) -> KubeConnection:
    token_path = service_account_dir / "token"
    loader = config.incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=str(token_path),
        cert_filename=str(service_account_dir / "ca.crt"),
        try_refresh_token=False,
        environ=environ,
    )
    configuration = client.Configuration()
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as error:
        raise TargetUnreachable(
            f"In-cluster config failed: {error}; it needs KUBERNETES_SERVICE_HOST/PORT and the service-account "
            f"files in {service_account_dir}, which Kubernetes provides only inside a pod"
        ) from error
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    reloader = TokenFileReloader(token_path)
    reloader(configuration)
    configuration.refresh_api_key_hook = reloader  # type: ignore[assignment]
    namespace_file = service_account_dir / "namespace"
    namespace = namespace_file.read_text(encoding="utf-8").strip() if namespace_file.exists() else None
    logger.info("Connected in-cluster to %s.", configuration.host)
    return KubeConnection(
        context=IN_CLUSTER_CONTEXT,
        api_client=CountingApiClient(configuration),
        default_namespace=namespace,
        token_reloader=reloader,
    )


def read_json(response: Any) -> dict[str, Any]:
    """Decode the body of a response requested with _preload_content=False."""
    data: dict[str, Any] = json.loads(response.data)
    return data
