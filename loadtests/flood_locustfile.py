"""Flood traffic: users that send requests back to back, used when wrk is not installed.

`loadtests.flood` starts it with STORMGATE_FLOOD_PATH (the path to request) and
STORMGATE_FLOOD_MAX_PER_USER (each user stops after that many requests, which bounds the
flood's request count).
"""

from __future__ import annotations

import os

from locust import FastHttpUser, constant, task
from locust.exception import StopUser

import loadtests.stats_plugin  # noqa: F401 - registers the statistics listeners
from loadtests.profiles import FLOOD_MAX_PER_USER_VARIABLE, FLOOD_PATH_VARIABLE

FLOOD_PATH = os.environ.get(FLOOD_PATH_VARIABLE) or "/work"
MAX_PER_USER = int(os.environ.get(FLOOD_MAX_PER_USER_VARIABLE) or 0)
"""Requests after which one user stops; 0 means no limit."""


class FloodUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.sent = 0

    @task
    def flood(self) -> None:
        if MAX_PER_USER and self.sent >= MAX_PER_USER:
            raise StopUser()
        self.sent += 1
        self.client.get(FLOOD_PATH, name=FLOOD_PATH)
