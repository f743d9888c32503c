"""Label selectors: the string form (`app=web,tier in (a,b)`) to the API's LabelSelector, and their complements.

NetworkPolicy has no deny rules, so "everything except the pods of selector S" is written as
a union of peers, one per requirement of S, each with the negated requirement: a pod is outside
S exactly when it fails at least one of S's requirements.
"""

from __future__ import annotations

import re
from typing import Any

from stormgate.errors import UsageError

_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQUALITY_TERM = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")

_NEGATED = {"In": "NotIn", "NotIn": "In", "Exists": "DoesNotExist", "DoesNotExist": "Exists"}

Requirement = dict[str, Any]
"""One matchExpressions entry: {"key": ..., "operator": ..., "values": [...]}."""


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for character in selector:
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
        if character == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += character
    terms.append(current)
    return [term for term in terms if term.strip()]


def parse_selector(selector: str) -> list[Requirement]:
    """Parse a label selector string into matchExpressions requirements; raise UsageError when it is invalid."""
    requirements: list[Requirement] = []
    for term in _split_terms(selector):
        if match := _SET_TERM.match(term):
            key, operator, values = match.groups()
            items = sorted(value.strip() for value in values.split(",") if value.strip())
            requirements.append({"key": key, "operator": "In" if operator == "in" else "NotIn", "values": items})
        elif match := _EQUALITY_TERM.match(term):
            key, operator, value = match.groups()
            requirements.append({"key": key, "operator": "NotIn" if operator == "!=" else "In", "values": [value]})
        elif match := _EXISTS_TERM.match(term):
            negation, key = match.groups()
            requirements.append({"key": key, "operator": "DoesNotExist" if negation else "Exists"})
        else:
            raise UsageError(
                f"Label selector term {term.strip()!r} of {selector!r} is invalid; use key=value, key!=value, "
                "key in (a,b), key notin (a,b), key or !key"
            )
    if not requirements:
        raise UsageError(f"Label selector {selector!r} is empty; give at least one requirement, such as app=web")
    return requirements


def label_selector(selector: str) -> dict[str, Any]:
    """Return the API's LabelSelector for a selector string."""
    return {"matchExpressions": parse_selector(selector)}


def negate(requirement: Requirement) -> Requirement:
    """Return the requirement that matches exactly the labels that `requirement` does not."""
    negated: Requirement = {"key": requirement["key"], "operator": _NEGATED[requirement["operator"]]}
    if negated["operator"] in ("In", "NotIn"):
        negated["values"] = list(requirement["values"])
    return negated


def complement_peers(selector: str, namespace: str) -> list[dict[str, Any]]:
    """Return NetworkPolicy peers that match every pod except those of `selector` in `namespace`.

    Pods in other namespaces are all included, so the complement is taken only inside `namespace`.
    """
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchExpressions": [negate(requirement)]}} for requirement in parse_selector(selector)
    ]
    peers.append(
        {
            "namespaceSelector": {
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [namespace]}]
            }
        }
    )
    return peers


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Return whether labels satisfy a selector string, as the API server evaluates it."""
    for requirement in parse_selector(selector):
        key, operator = requirement["key"], requirement["operator"]
        if operator == "In" and labels.get(key) not in requirement["values"]:
            return False
        if operator == "NotIn" and key in labels and labels[key] in requirement["values"]:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
