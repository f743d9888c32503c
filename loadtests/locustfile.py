"""Steady load on the platform's work endpoint.

Each user sends one request per second (`constant_throughput`), so the request rate
equals the user count. Runs as it is with plain ``locust -f loadtests/locustfile.py``;
the stormgate statistics stream switches on only when the harness sets its variable.
"""

from __future__ import annotations

from locust import FastHttpUser, constant_throughput, task

import loadtests.stats_plugin  # noqa: F401 - registers the statistics listeners


class WorkUser(FastHttpUser):
    wait_time = constant_throughput(1.0)

    @task
    def work(self) -> None:
        self.client.get("/work", name="/work")
