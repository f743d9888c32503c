"""Steady load on the platform's work endpoint.

Each user sends STORMGATE_RATE_PER_USER requests per second (default 1, so the request
rate equals the user count; 0 sends back to back). Runs as it is with plain
``locust -f loadtests/locustfile.py``: the statistics stream switches on only when the
harness sets STORMGATE_STATS_DIR, and the profile shape only when it sets STORMGATE_SHAPE.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, constant_throughput, task

import loadtests.stats_plugin  # noqa: F401 - registers the statistics listeners
from loadtests.profiles import RATE_VARIABLE, SHAPE_VARIABLE

if os.environ.get(SHAPE_VARIABLE):
    # Locust uses a shape class only when the locustfile's namespace contains one.
    from loadtests.shapes import EnvironmentShape  # noqa: F401

RATE_PER_USER = float(os.environ.get(RATE_VARIABLE) or 1.0)


class WorkUser(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER) if RATE_PER_USER > 0 else constant(0)

    @task
    def work(self) -> None:
        self.client.get("/work", name="/work")
