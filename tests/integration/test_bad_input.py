"""Bad input gets a clear error that names the value and the fix, and leaves nothing running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.environment import Sandbox, SandboxConfig
from stormgate.errors import InvalidScenario, PortInUse
from stormgate.scenario import load_scenario
from tests.conftest import free_port, requires_sandbox

REPO = Path(__file__).resolve().parents[2]
STORMGATE = [sys.executable, "-m", "stormgate.cli"]


def test_unknown_scenario_option_names_file_and_field(tmp_path: Path) -> None:
    original = (REPO / "scenarios" / "replica_loss.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(original.replace("  chaos_s: 10\n", "  chaos_s: 10\n  choas_s: 10\n"))

    with pytest.raises(InvalidScenario) as raised:
        load_scenario(broken)

    assert str(broken) in str(raised.value)
    assert "phases.choas_s: unknown option" in str(raised.value)


def test_unknown_cli_option_is_a_usage_error() -> None:
    result = subprocess.run([*STORMGATE, "sandbox", "up", "--replicaz", "3"], capture_output=True, text=True, cwd=REPO)

    assert result.returncode == 2
    assert "--replicaz" in result.stderr


def test_invalid_sandbox_setting_names_the_setting() -> None:
    result = subprocess.run(
        [*STORMGATE, "sandbox", "up", "--error-rate", "1.5"], capture_output=True, text=True, cwd=REPO
    )

    assert result.returncode == 2
    assert "error_rate" in result.stderr
    assert "1.5" in result.stderr


@requires_sandbox
def test_occupied_port_is_rejected_and_nothing_runs() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sandbox = Sandbox(SandboxConfig(name="t-port-in-use", lb_port=port, prometheus_port=free_port()))

        with pytest.raises(PortInUse) as raised:
            sandbox.up()

    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "--lb-port" in str(raised.value)
    assert not sandbox.exists()
    assert not sandbox._own_processes()


@requires_sandbox
def test_missing_binary_names_the_package(tmp_path: Path) -> None:
    # A PATH with everything the sandbox needs except haproxy.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ip", "prometheus", "iptables"):
        found = subprocess.run(["which", name], capture_output=True, text=True, check=True).stdout.strip()
        (bin_dir / name).symlink_to(found)
    environment = {**os.environ, "PATH": str(bin_dir)}
    command = [*STORMGATE, "sandbox", "up", "--name", "t-missing", "--lb-port", str(free_port())]

    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment)

    assert result.returncode == 3
    assert "'haproxy'" in result.stderr
    assert "apt-get install -y haproxy" in result.stderr
    assert not Sandbox(SandboxConfig(name="t-missing")).exists()
