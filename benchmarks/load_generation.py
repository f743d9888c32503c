"""Requests per second per core of the load generators, on one local target in one run.

Legs, each LEG_S long and each one core's worth of generator (one Locust process, one wrk
thread); the two Locust legs run twice, alternating:
- ``locust``: bare ``locust --headless`` with the default locustfile's FastHttpUser, no wait;
- ``runner``: the same profile through `LocustRunner` with the statistics plugin on;
- ``flood``: `loadtests.flood.Flood` (wrk where installed);
- ``flood_locust``: the flood's Locust fallback;
- ``wrk``: plain wrk.

The target is HAProxy answering every request itself with ``http-request return``. The
sandbox's replicas are Python processes that answer a few thousand requests per second,
less than one wrk thread sends, so they would measure the target and not the generators.

"Per core" divides the requests by the CPU seconds the generator used (user plus system,
from `resource.getrusage(RUSAGE_CHILDREN)` around each leg). On a machine whose other
processes take CPU, this is steadier than dividing by wall time.

Usage: ``.venv/bin/python benchmarks/load_generation.py [--leg-s 12]``. The last line of
the output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtests.flood import Flood, FloodSpec  # noqa: E402
from loadtests.profiles import RATE_VARIABLE, SHAPE_VARIABLE, SteadyShape  # noqa: E402
from loadtests.runner import DEFAULT_LOCUSTFILE, LocustRunner, locust_environment  # noqa: E402

LEG_S = 12.0
ROUNDS = 2
USERS = 32
"""Locust users and wrk connections: enough to keep one core busy on loopback."""

HAPROXY_CONFIG = """\
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend benchmark_target
  bind 127.0.0.1:{port}
  http-request return status 200 content-type text/plain string "ok"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, leg: Callable[[], tuple[int, float]]) -> dict[str, float]:
    """Run one leg; it returns (requests, wall seconds of sending). Add CPU time and rates."""
    cpu_before = children_cpu_s()
    requests, wall_s = leg()
    cpu_s = children_cpu_s() - cpu_before
    figures = {
        "requests": requests,
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "rps": round(requests / wall_s, 1),
        "rps_per_core": round(requests / cpu_s, 1),
    }
    print(f"{name:>13}: {json.dumps(figures)}", flush=True)
    return figures


def profile(leg_s: float) -> SteadyShape:
    return SteadyShape(users=USERS, spawn_rate=USERS, run_time_s=leg_s, rate_per_user=0)


def bare_locust(url: str, workdir: Path, leg_s: float) -> tuple[int, float]:
    # The same profile shape as the runner leg, so the legs differ only in the runner and the statistics plugin.
    command = [
        sys.executable, "-m", "locust", "-f", str(DEFAULT_LOCUSTFILE), "--headless", "--host", url,
        "--json", "--loglevel", "WARNING",
    ]  # fmt: skip
    environment = locust_environment(
        stats_dir=None, extra={SHAPE_VARIABLE: profile(leg_s).model_dump_json(), RATE_VARIABLE: "0"}
    )
    started = time.monotonic()
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=False, timeout=leg_s + 60)
    wall_s = time.monotonic() - started
    entries = json.loads(output.stdout)
    return sum(entry["num_requests"] for entry in entries), wall_s


def stormgate_runner(url: str, workdir: Path, leg_s: float) -> tuple[int, float]:
    runner = LocustRunner(
        host=url, users=USERS, spawn_rate=USERS, run_time_s=leg_s, workdir=workdir, shape=profile(leg_s)
    )
    started = time.monotonic()
    with runner:
        assert runner.process is not None
        runner.process.wait(timeout=leg_s + 60)
    wall_s = time.monotonic() - started
    return runner.stream.window(0, time.time() + 5).requests, wall_s


def flood(url: str, workdir: Path, leg_s: float, engine: str) -> tuple[int, float]:
    spec = FloodSpec(duration_s=leg_s, connections=USERS, threads=1, engine=engine)  # type: ignore[arg-type]
    started = time.monotonic()
    with Flood(url, spec, workdir=workdir, run_id="benchmark") as running:
        result = running.wait()
    return result.requests, time.monotonic() - started


def plain_wrk(url: str, workdir: Path, leg_s: float) -> tuple[int, float]:
    command = ["wrk", "-t", "1", "-c", str(USERS), "-d", f"{int(leg_s)}s", url + "/work"]
    started = time.monotonic()
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=leg_s + 30)
    wall_s = time.monotonic() - started
    match = re.search(r"(\d+) requests in", output.stdout)
    if match is None:
        raise RuntimeError(f"wrk printed no request count:\n{output.stdout}")
    return int(match.group(1)), wall_s


def start_target(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("haproxy is not installed; run: make install")
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port))
    process = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url + "/work", timeout=1).read()
            return process, url
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leg-s", type=float, default=LEG_S, help="seconds each leg sends load (default 12)")
    options = parser.parse_args()
    leg_s: float = options.leg_s

    with tempfile.TemporaryDirectory(prefix="stormgate-bench-") as folder:
        workdir = Path(folder)
        target, url = start_target(workdir)
        try:
            print(f"target {url}, {os.cpu_count()} CPUs, legs of {leg_s:.0f} s", flush=True)
            # Other processes on a shared machine take CPU in bursts, so the two Locust legs
            # alternate for ROUNDS rounds and each keeps its best round.
            rounds: dict[str, list[dict[str, float]]] = {"locust": [], "runner": []}
            for index in range(ROUNDS):
                rounds["locust"].append(measure("locust", lambda: bare_locust(url, workdir / "locust", leg_s)))
                runner_leg = functools.partial(stormgate_runner, url, workdir / f"runner-{index}", leg_s)
                rounds["runner"].append(measure("runner", runner_leg))
            results = {name: max(figures, key=lambda leg: leg["rps_per_core"]) for name, figures in rounds.items()}
            results |= {
                "flood": measure("flood", lambda: flood(url, workdir / "flood", leg_s, "auto")),
                "flood_locust": measure("flood_locust", lambda: flood(url, workdir / "flood-locust", leg_s, "locust")),
            }
            if shutil.which("wrk"):
                results["wrk"] = measure("wrk", lambda: plain_wrk(url, workdir, leg_s))
        finally:
            target.terminate()
            target.wait(timeout=10)

    summary: dict[str, object] = {name: figures["rps_per_core"] for name, figures in results.items()}
    summary["runner_vs_locust"] = round(results["runner"]["rps_per_core"] / results["locust"]["rps_per_core"], 3)
    if "wrk" in results:
        summary["flood_vs_wrk"] = round(results["flood"]["rps_per_core"] / results["wrk"]["rps_per_core"], 3)
    summary["wall_rps"] = {name: figures["rps"] for name, figures in results.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
