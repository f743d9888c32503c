"""Fault targets: the protocol that every platform (sandbox, Kubernetes) implements."""

from __future__ import annotations

import signal
from typing import Protocol

from pydantic import BaseModel


class Instance(BaseModel):
    """One instance of the service under test (a sandbox replica, a Kubernetes pod)."""

    name: str
    pid: int = 0
    """Process id for targets that run local processes; 0 elsewhere."""
    started_at: float = 0.0
    """Start time in seconds since the Unix epoch, used to pick the oldest instances."""
    host: str = ""
    """Address the instance listens on, for faults that act on the network; empty when unknown."""
    port: int = 0


class RecoveryProbe(Protocol):
    """Tells, when polled, whether the platform has recovered from a fault."""

    def poll(self) -> bool:
        """Return True once every desired instance is ready again."""
        ...

    def describe(self) -> str:
        """Describe the current state for a failure message."""
        ...


class Target(Protocol):
    name: str
    """Target name for logs and reports, such as "sandbox/default"."""
    load_url: str
    """Base URL that the load generator sends requests to."""
    prometheus_url: str

    def instances(self) -> list[Instance]: ...

    def protected_instances(self) -> set[str]:
        """Names that no fault may select: the harness's load generators and monitoring."""
        ...

    def kill(self, instance: Instance, sig: signal.Signals) -> None: ...

    def instance_gone(self, instance: Instance) -> bool:
        """Return True when this exact instance (name and pid) no longer runs."""
        ...

    def recovery_probe(self, killed: list[Instance], *, expect_restart: bool = True) -> RecoveryProbe:
        """Return a probe of platform recovery after a fault that touched `killed`.

        With `expect_restart`, the touched instances count as recovered only once they were
        replaced (new process or pod); without it, once they are ready again.
        """
        ...

    def ensure_running(self, instance_name: str) -> bool:
        """Start the instance if it is not running; return True if it had to be started."""
        ...


class NetworkTarget(Target, Protocol):
    """A target whose instances share one Linux network namespace that iptables can act on."""

    network_namespace: str
    """Name of the namespace as `ip netns list` prints it."""
    lb_source_address: str
    """Source address of the load balancer's traffic and health checks as the instances see it."""

    def backend_status(self) -> dict[str, str]:
        """Return the load balancer's status of every instance by name, such as "UP" or "DOWN"."""
        ...
