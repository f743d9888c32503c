"""iptables inside a network namespace: the rules a partition adds, found again by their comment.

Every rule stormgate adds carries the comment `stormgate:<run id>:<fault id>` (iptables
`-m comment`), so a revert deletes exactly its own rules and a cleanup can find every
stormgate rule in a namespace even when the ledger is lost. Only the filter table is used.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from stormgate.errors import StormgateError

logger = logging.getLogger(__name__)

COMMENT_PREFIX = "stormgate:"
COMMAND_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 1.0
"""Time a probe connection gets; a dropped SYN shows as a timeout, so keep it short."""


class NetfilterError(StormgateError, RuntimeError):
    """An iptables or namespace command failed."""


class ConnectionCheck(BaseModel):
    """A TCP connection attempt made inside the namespace from a given source address."""

    source: str
    host: str
    port: int
    expect_connected: bool
    """False for a path the fault must cut; True for a control path that must still work."""

    def describe(self) -> str:
        outcome = "connects" if self.expect_connected else "fails"
        return f"{self.source} -> {self.host}:{self.port} {outcome}"


def namespace_exists(netns: str) -> bool:
    """Return whether the namespace exists, judged by the bind mount that `ip netns` keeps under /run/netns."""
    return Path("/run/netns", netns).exists()


def rule_comment(*, run_id: str, fault_id: str) -> str:
    return f"{COMMENT_PREFIX}{run_id or '-'}:{fault_id}"


def run_in_namespace(netns: str, command: list[str], *, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run a command inside the namespace and return its standard output; raise NetfilterError on failure."""
    full = ["ip", "netns", "exec", netns, *command]
    try:
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise NetfilterError(
            f"Command {shlex.join(full)} timed out after {timeout_s:.0f} s; check that the namespace {netns} exists"
        ) from error
    if result.returncode != 0:
        raise NetfilterError(
            f"Command {shlex.join(full)} failed with exit code {result.returncode}: {result.stderr.strip()[:500]}"
        )
    return result.stdout


def list_rules(netns: str) -> list[str]:
    """Return every rule of the filter table in `iptables -S` form, such as "-A INPUT -s ... -j DROP"."""
    output = run_in_namespace(netns, ["iptables", "-w", "-t", "filter", "-S"])
    return [line for line in output.splitlines() if line.startswith("-A ")]


def comment_of(rule: str) -> str | None:
    """Return the value of the rule's `--comment`, or None when it has none."""
    words = shlex.split(rule)
    for index, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[index + 1]
    return None


def rules_with_comment(netns: str, comment: str) -> list[str]:
    return [rule for rule in list_rules(netns) if comment_of(rule) == comment]


def stormgate_rules(netns: str) -> list[str]:
    """Return every rule in the namespace whose comment marks it as added by stormgate."""
    return [rule for rule in list_rules(netns) if (comment_of(rule) or "").startswith(COMMENT_PREFIX)]


def insert_rule(netns: str, chain: str, match: list[str], *, comment: str, action: str) -> str:
    """Insert a rule at the top of the chain and return it in `iptables -S` form."""
    arguments = [*match, "-m", "comment", "--comment", comment, "-j", action]
    run_in_namespace(netns, ["iptables", "-w", "-t", "filter", "-I", chain, "1", *arguments])
    return shlex.join(["-A", chain, *arguments])


def delete_rule(netns: str, rule: str) -> None:
    """Delete one rule given in `iptables -S` form."""
    words = shlex.split(rule)
    if not words or words[0] != "-A":
        raise NetfilterError(f"Rule {rule!r} is not in iptables -S form (-A CHAIN ...); it cannot be deleted")
    run_in_namespace(netns, ["iptables", "-w", "-t", "filter", "-D", *words[1:]])


def delete_rules(netns: str, rules: list[str]) -> list[str]:
    """Delete the given rules (present ones only) and return those deleted."""
    deleted = []
    for rule in rules:
        delete_rule(netns, rule)
        deleted.append(rule)
        logger.info("Deleted iptables rule in %s: %s", netns, rule)
    return deleted


# The probe runs inside the namespace as its own process; it prints one JSON list of booleans.
_PROBE = """
import json, socket, sys
results = []
for source, host, port, timeout_s in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=timeout_s, source_address=(source, 0)).close()
        results.append(True)
    except OSError:
        results.append(False)
print(json.dumps(results))
"""


def try_connections(netns: str, checks: list[ConnectionCheck]) -> list[bool]:
    """Attempt every connection inside the namespace and return whether each one connected."""
    if not checks:
        return []
    payload = json.dumps([[check.source, check.host, check.port, CONNECT_TIMEOUT_S] for check in checks])
    output = run_in_namespace(
        netns,
        [sys.executable, "-c", _PROBE, payload],
        timeout_s=COMMAND_TIMEOUT_S + CONNECT_TIMEOUT_S * len(checks),
    )
    connected = json.loads(output)
    return [bool(value) for value in connected]
