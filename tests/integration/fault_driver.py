"""Child process for the revert-path tests: inject a partition under a FaultGuard, then block.

Run as `python -m tests.integration.fault_driver --sandbox-name NAME --ledger PATH --run-id ID`.
It prints READY once the partition is injected and verified, then sleeps until a signal
ends it or `--block-s` runs out. Exit codes: 0 at the end of the block, 130 after an
interrupt (SIGINT or SIGTERM, both reverted by the guard first).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaos.faults.partition import Partition, PartitionSpec
from chaos.guard import FaultGuard
from chaos.ledger import Ledger
from chaos.targets.sandbox import SandboxTarget
from sandbox.environment import Sandbox, SandboxConfig

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandbox-name", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--block-s", type=float, default=60.0, help="longest time to block after READY")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    target = SandboxTarget(Sandbox.attach(args.sandbox_name))
    fault = Partition(PartitionSpec(count=1))
    plan = fault.plan(target, fault_id=f"{args.run_id}/driver/1", seed=1, run_id=args.run_id)
    try:
        with FaultGuard(Ledger(args.ledger), target, fault, plan, run_id=args.run_id):
            print("READY", flush=True)
            deadline = time.monotonic() + args.block_s
            while time.monotonic() < deadline:
                time.sleep(0.1)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----- helpers for the tests that use this driver -----


def start_sandbox(**settings: Any) -> Sandbox:
    """Start a sandbox with a unique name and free ports, as tests/conftest.py's make_sandbox does."""
    from tests.conftest import free_port

    config = SandboxConfig(
        name=settings.pop("name", f"f{secrets.token_hex(3)}"),
        lb_port=free_port(),
        prometheus_port=free_port(),
        **settings,
    )
    sandbox = Sandbox(config)
    try:
        sandbox.up()
    except BaseException:
        sandbox.down()
        raise
    return sandbox


def iptables_state(netns: str) -> list[str]:
    """Return `iptables-save` of the namespace without its comment lines, which carry a timestamp."""
    output = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-save"], capture_output=True, text=True, check=True, timeout=15
    ).stdout
    return [line for line in output.splitlines() if not line.startswith("#")]


def stormgate_rule_lines(netns: str) -> list[str]:
    return [line for line in iptables_state(netns) if "stormgate:" in line]


def assert_sandbox_whole(sandbox: Sandbox) -> None:
    """Assert that no stormgate rule is left and that every replica runs and is UP again."""
    assert stormgate_rule_lines(sandbox.config.netns) == []
    sandbox.wait_ready(timeout_s=30.0)
    states = {process.name: process.state for process in sandbox.processes()}
    assert all(states[replica.name] == "RUNNING" for replica in sandbox.replicas), states
