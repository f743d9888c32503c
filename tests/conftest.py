"""Fixtures shared by the harness's own tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandbox.environment import Sandbox, SandboxConfig

SANDBOX_BINARIES = ("ip", "haproxy", "prometheus", "iptables")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sandbox_skip_reason() -> str:
    if os.geteuid() != 0:
        return "the sandbox needs root for its network namespace"
    missing = [name for name in SANDBOX_BINARIES if shutil.which(name) is None]
    if missing:
        return f"missing system binaries {', '.join(missing)}; run: make install"
    return ""


requires_sandbox = pytest.mark.skipif(bool(sandbox_skip_reason()), reason=sandbox_skip_reason() or "ready")


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes with unique names and free ports; stop every one after the test."""
    started: list[Sandbox] = []

    def start(**settings: Any) -> Sandbox:
        config = SandboxConfig(
            name=settings.pop("name", f"t{secrets.token_hex(3)}"),
            lb_port=settings.pop("lb_port", free_port()),
            prometheus_port=settings.pop("prometheus_port", free_port()),
            **settings,
        )
        sandbox = Sandbox(config)
        started.append(sandbox)
        sandbox.up()
        return sandbox

    yield start
    for sandbox in started:
        sandbox.down()
