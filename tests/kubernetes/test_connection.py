"""In-cluster config with a rotating service-account token, and request counting."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from chaos.targets.kube_client import connect
from chaos.targets.kube_safety import KubeSafety
from chaos.targets.kubernetes import KubernetesTarget
from stormgate.errors import SafetyViolation
from tests.kubernetes.conftest import Cluster

pytestmark = pytest.mark.kubernetes


def _service_account_dir(cluster: Cluster, tmp_path: Path, namespace: str) -> tuple[Path, str, dict[str, str]]:
    """Lay out the files a pod gets at /var/run/secrets/kubernetes.io/serviceaccount; return (dir, token, env)."""
    plane = cluster.require_controlplane("it issues service-account tokens")
    kubeconfig = plane.serviceaccount_kubeconfig(namespace, "reader", path=tmp_path / "reader.kubeconfig")
    token = str(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"])
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(Path(plane.ca_file).read_bytes())
    (folder / "namespace").write_text(namespace)
    server = urllib.parse.urlsplit(plane.server)
    environ = {"KUBERNETES_SERVICE_HOST": str(server.hostname), "KUBERNETES_SERVICE_PORT": str(server.port)}
    return folder, token, environ


def test_in_cluster_token_reloaded_after_rotation(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    folder, token, environ = _service_account_dir(cluster, tmp_path, namespace)
    token_file = folder / "token"
    token_file.write_text("not-a-valid-token")
    safety = KubeSafety(allowed_contexts=("in-cluster",), allowed_namespaces=(namespace,))
    connection = connect(context="in-cluster", safety=safety, service_account_dir=folder, environ=environ)
    try:
        with pytest.raises(ApiException) as error:
            connection.core.list_namespaced_pod(namespace)
        assert error.value.status == 401

        # The kubelet rotates the token by replacing the file; the next request must use the new one.
        token_file.write_text(token)
        stat = token_file.stat()
        os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        forbidden_or_ok = _status_of(lambda: connection.core.list_namespaced_pod(namespace))

        assert forbidden_or_ok in (200, 403)
        assert connection.token_reloader is not None
        assert connection.token_reloader.reloads == 2
        assert connection.default_namespace == namespace
    finally:
        connection.close()


def _status_of(call: Callable[[], object]) -> int:
    """Return 200 when the call succeeds, else the HTTP status; 403 still proves the token authenticated."""
    try:
        call()
    except ApiException as error:
        return int(error.status or 0)
    return 200


def test_in_cluster_needs_allowlisted_context(tmp_path: Path) -> None:
    safety = KubeSafety(allowed_contexts=("staging",), allowed_namespaces=("shop",))
    with pytest.raises(SafetyViolation, match="'in-cluster'"):
        connect(context="in-cluster", safety=safety, service_account_dir=tmp_path, environ={})


def test_requests_are_counted(cluster: Cluster, namespace: str, make_target: Callable[..., KubernetesTarget]) -> None:
    target = make_target(namespace)
    before = target.connection.request_total

    target.protected_instances()
    target.protected_instances()

    assert target.connection.request_total == before + 2
    assert target.connection.api_client.requests["GET"] >= 2
