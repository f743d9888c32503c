"""A harness killed by SIGKILL leaves no load generator running: the kernel sends its children SIGTERM.

The harness is a child Python process that serves HTTP on loopback, starts a LocustRunner
against it and prints the Locust pid. The test kills that harness with SIGKILL, which no
handler can catch, and waits for Locust to end.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.ledger import process_start_ticks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
"""Time the harness gets to start Locust and see its first request, on a loaded machine."""
LOCUST_GONE_TIMEOUT_S = 10.0

HARNESS = """
import http.server, sys, threading, time
from pathlib import Path
from loadtests.runner import LocustRunner

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
runner = LocustRunner(
    host=f"http://127.0.0.1:{server.server_address[1]}", users=1, spawn_rate=1.0, run_time_s=60.0,
    workdir=Path(sys.argv[1]), run_id="parent-death",
)
runner.start()
runner.wait_for_first_record()
print(runner.process.pid, flush=True)
time.sleep(60)
"""


def read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"the harness printed nothing within {timeout_s:.0f} s")
    return process.stdout.readline().strip()


def test_locust_ends_after_harness_sigkill(tmp_path: Path) -> None:
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    locust_pid = 0
    try:
        line = read_line(harness, START_TIMEOUT_S)
        assert line.isdigit(), f"harness printed {line!r} instead of the Locust pid; see {tmp_path / 'locust.log'}"
        locust_pid = int(line)
        assert process_start_ticks(locust_pid) is not None, "Locust was not running when the harness reported it"

        harness.kill()
        harness.wait(timeout=START_TIMEOUT_S)
        deadline = time.monotonic() + LOCUST_GONE_TIMEOUT_S
        while process_start_ticks(locust_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)

        assert process_start_ticks(locust_pid) is None, (
            f"Locust (pid {locust_pid}) still runs {LOCUST_GONE_TIMEOUT_S:.0f} s after its harness was killed"
        )
    finally:
        harness.kill()
        harness.wait()
        if locust_pid and process_start_ticks(locust_pid) is not None:
            # Locust leads its own process group (start_new_session), so this ends its workers too.
            os.killpg(locust_pid, signal.SIGKILL)
