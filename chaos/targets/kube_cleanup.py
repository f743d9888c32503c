"""Objects that stormgate leaves in a cluster, found by their labels and annotations, and their removal.

Faults mark what they create or change: NetworkPolicies carry the label
`app.kubernetes.io/managed-by: stormgate` and the run id, nodes that a drain cordoned carry
the annotation `stormgate/cordoned-by`. A cleanup finds them by these marks alone, so it works
after a crash that lost the ledger.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from chaos.targets.kube_client import KubeConnection, KubeForbidden, api_error, read_json
from chaos.targets.kube_safety import CORDONED_BY_ANNOTATION, EXPIRES_AT_ANNOTATION, MANAGED_SELECTOR
from chaos.targets.kube_watch import parse_time

logger = logging.getLogger(__name__)

_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9._-]")


def label_value(value: str) -> str:
    """Return `value` as a valid label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric at both ends.

    A value that had to change gets a short hash suffix, so two different ids stay different.
    """
    cleaned = _LABEL_VALUE_INVALID.sub("-", value).strip("-._")
    if cleaned == value and len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{cleaned[:54].strip('-._')}-{digest}".strip("-")


def resource_name(prefix: str, value: str) -> str:
    """Return a DNS-1123 name `prefix-value` (lowercase, at most 63 characters) that is unique per value."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", value.lower()).strip("-")
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{prefix}-{cleaned[: 63 - len(prefix) - 10].strip('-')}-{digest}"


def expiry(duration_s: float) -> str:
    """Return the UTC time `duration_s` from now in ISO 8601 with milliseconds, as the expiry annotation stores it."""
    moment = datetime.now(UTC) + timedelta(seconds=duration_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delete_managed_policies(
    connection: KubeConnection, namespaces: list[str] | None, *, expired_only: bool = False, extra_selector: str = ""
) -> list[str]:
    """Delete stormgate's NetworkPolicies in these namespaces (None: all); return "namespace/name" of each."""
    selector = MANAGED_SELECTOR + (f",{extra_selector}" if extra_selector else "")
    networking = connection.networking
    items: list[dict[str, Any]] = []
    try:
        if namespaces is None:
            items = (
                read_json(
                    networking.list_network_policy_for_all_namespaces(label_selector=selector, _preload_content=False)
                ).get("items")
                or []
            )
        else:
            for namespace in namespaces:
                response = networking.list_namespaced_network_policy(
                    namespace, label_selector=selector, _preload_content=False
                )
                items += read_json(response).get("items") or []
    except ApiException as error:
        raise api_error(error, f"Listing stormgate NetworkPolicies ({selector})") from error

    now = datetime.now(UTC).timestamp()
    deleted = []
    for item in items:
        metadata = item["metadata"]
        expires_at = parse_time((metadata.get("annotations") or {}).get(EXPIRES_AT_ANNOTATION))
        if expired_only and expires_at > now:
            continue
        name, namespace = metadata["name"], metadata["namespace"]
        try:
            networking.delete_namespaced_network_policy(name, namespace)
        except ApiException as error:
            if error.status == 404:
                continue
            raise api_error(error, f"Deleting NetworkPolicy {namespace}/{name}") from error
        deleted.append(f"{namespace}/{name}")
        logger.info(
            "Deleted NetworkPolicy %s/%s (run %s).",
            namespace,
            name,
            (metadata.get("labels") or {}).get("stormgate/run-id", "?"),
        )
    return deleted


def uncordon(connection: KubeConnection, node: str) -> bool:
    """Uncordon a node that stormgate cordoned and remove the mark; return False if the node carries no mark."""
    core = connection.core
    try:
        body = read_json(core.read_node(node, _preload_content=False))
    except ApiException as error:
        if error.status == 404:
            return False
        raise api_error(error, f"Reading node {node}") from error
    if CORDONED_BY_ANNOTATION not in (body["metadata"].get("annotations") or {}):
        return False
    patch = {"spec": {"unschedulable": False}, "metadata": {"annotations": {CORDONED_BY_ANNOTATION: None}}}
    try:
        core.patch_node(node, patch)
    except ApiException as error:
        raise api_error(error, f"Uncordoning node {node}") from error
    logger.info("Uncordoned node %s, which stormgate had cordoned.", node)
    return True


def uncordon_marked_nodes(connection: KubeConnection) -> list[str]:
    """Uncordon every node that carries stormgate's cordon mark; return their names."""
    try:
        nodes = read_json(connection.core.list_node(_preload_content=False)).get("items") or []
    except ApiException as error:
        raise api_error(error, "Listing nodes") from error
    marked = [
        node["metadata"]["name"]
        for node in nodes
        if CORDONED_BY_ANNOTATION in (node["metadata"].get("annotations") or {})
    ]
    return [name for name in marked if uncordon(connection, name)]


def clean_cluster(
    connection: KubeConnection, namespaces: list[str] | None, *, expired_only: bool = False, nodes: bool = True
) -> list[str]:
    """Delete stormgate's NetworkPolicies and uncordon its nodes; return one line per change."""
    lines = [
        f"deleted NetworkPolicy {name}"
        for name in delete_managed_policies(connection, namespaces, expired_only=expired_only)
    ]
    if nodes:
        try:
            lines += [f"uncordoned node {name}" for name in uncordon_marked_nodes(connection)]
        except KubeForbidden as error:
            # A harness without node faults has no ClusterRole on nodes, so it never cordoned one.
            logger.info("Skipped the node check of the cleanup: %s", error)
    return lines
