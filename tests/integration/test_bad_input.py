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


def test_run_never_reads_an_older_record(tmp_path: Path) -> None:
    # An earlier run's PASS must not become the verdict of a run that wrote no record.
    old = tmp_path / "runs" / "old-run"
    old.mkdir(parents=True)
    (old / "run.json").write_text('{"verdict": "pass", "run_id": "old-run", "scenarios": []}')
    (tmp_path / "runs" / "latest").symlink_to("old-run")
    (tmp_path / "test_plain.py").write_text("def test_fails():\n    assert False\n")
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    result = subprocess.run(
        [*STORMGATE, "run", "test_plain.py", "-p", "no:cacheprovider"],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120,
    )  # fmt: skip

    assert result.returncode == 1, result.stdout[-2000:]
    assert "wrote no run.json" in result.stderr


def test_invalid_scenario_exits_with_usage_code(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nfault: {kind: instance-kill, count: 0}\nslos: []\n")
    (tmp_path / "test_broken.py").write_text(
        "import pytest\n"
        "from pathlib import Path\n"
        "from stormgate.scenario import load_scenario\n\n"
        "@pytest.mark.scenario('broken')\n"
        "def test_broken(certify):\n"
        "    certify(load_scenario(Path(__file__).parent / 'broken.yaml'))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO)}

    result = subprocess.run(
        [*STORMGATE, "run", "test_broken.py", "-p", "no:cacheprovider", "--sandbox-name", "never-started"],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120,
    )  # fmt: skip

    assert result.returncode == 2, result.stdout[-2000:]
    assert "fault.instance-kill.count" in result.stdout
    assert not Sandbox(SandboxConfig(name="never-started")).exists()
