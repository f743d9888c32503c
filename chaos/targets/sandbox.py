"""The sandbox as a fault target: replicas are supervisord programs behind HAProxy."""

from __future__ import annotations

import logging
import os
import signal
import time
import xmlrpc.client

from chaos.targets.base import Instance
from sandbox.environment import Sandbox

logger = logging.getLogger(__name__)


class SandboxRecoveryProbe:
    """Platform recovery in the sandbox: new processes up and every backend UP in HAProxy.

    A backend that was UP before the kill may still read UP for a moment after it, until
    HAProxy's next check fails. So a killed replica counts as recovered only after HAProxy
    was seen to notice the loss (a failed check or DOWN), or, when the new process came up
    faster than that, after it has been running for `fall` check intervals.
    """

    def __init__(self, sandbox: Sandbox, killed: list[Instance], *, expect_restart: bool = True) -> None:
        self.sandbox = sandbox
        self.killed = {instance.name: instance.pid for instance in killed}
        self.loss_seen: set[str] = set()
        self.replaced_at: dict[str, float] = {}
        if not expect_restart:
            # A partition leaves the process running: the replica counts as "replaced" from the
            # start, so recovery only waits for HAProxy to have seen the loss and the return.
            started = time.monotonic()
            self.replaced_at = {name: started for name in self.killed}
        self.last_state = "not polled yet"

    def poll(self) -> bool:
        now = time.monotonic()
        pids = self.sandbox.replica_pids()
        servers = {server.name: server for server in self.sandbox.servers()}
        for name, old_pid in self.killed.items():
            server = servers.get(name)
            if server is not None and not server.healthy:
                self.loss_seen.add(name)
            if pids.get(name, 0) not in (0, old_pid):
                self.replaced_at.setdefault(name, now)

        grace_s = self.sandbox.config.check_fall * self.sandbox.config.check_interval_ms / 1000.0
        waiting = []
        for name in self.killed:
            if name not in self.replaced_at:
                waiting.append(f"{name} not restarted")
            elif name not in self.loss_seen and now - self.replaced_at[name] < grace_s:
                waiting.append(f"{name} restarted but not yet checked")
        unhealthy = [
            f"{name} {server.status}/{server.check_status}" for name, server in servers.items() if not server.healthy
        ]
        self.last_state = "; ".join(waiting + unhealthy) or "every replica UP"
        return not waiting and not unhealthy and len(servers) == self.sandbox.config.replicas

    def describe(self) -> str:
        return self.last_state


class SandboxTarget:
    """Fault target backed by a running sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.name = f"sandbox/{sandbox.config.name}"
        self.load_url = sandbox.lb_url
        self.prometheus_url = sandbox.prometheus_url
        self.network_namespace = sandbox.config.netns
        # HAProxy (through its `namespace` keyword) and Prometheus both connect to the replicas
        # from 127.0.0.1 inside the namespace, as `ip netns exec <ns> ss -tn` shows. So a rule on
        # this source cuts a replica off from the load balancer and from scraping alike.
        self.lb_source_address = "127.0.0.1"

    def instances(self) -> list[Instance]:
        replicas = {replica.name: replica for replica in self.sandbox.replicas}
        instances = []
        for process in self.sandbox.processes():
            replica = replicas.get(process.name)
            if replica is not None and process.state == "RUNNING" and process.pid:
                instances.append(
                    Instance(
                        name=process.name,
                        pid=process.pid,
                        started_at=_process_start(process.pid),
                        host=replica.address,
                        port=replica.port,
                    )
                )
        return sorted(instances, key=lambda instance: instance.name)

    def protected_instances(self) -> set[str]:
        # HAProxy and Prometheus are the harness's view of the platform; faults never select them.
        return {"haproxy", "prometheus"}

    def kill(self, instance: Instance, sig: signal.Signals) -> None:
        logger.info("Sending %s to %s (pid %d) in %s.", sig.name, instance.name, instance.pid, self.name)
        os.kill(instance.pid, sig)

    def instance_gone(self, instance: Instance) -> bool:
        current = self.sandbox.replica_pids().get(instance.name, 0)
        return current != instance.pid

    def recovery_probe(self, killed: list[Instance], *, expect_restart: bool = True) -> SandboxRecoveryProbe:
        """Return a probe of platform recovery; pass expect_restart=False when the processes were not killed."""
        return SandboxRecoveryProbe(self.sandbox, killed, expect_restart=expect_restart)

    def backend_status(self) -> dict[str, str]:
        return {server.name: server.status for server in self.sandbox.servers()}

    def ensure_running(self, instance_name: str) -> bool:
        states = {process.name: process.state for process in self.sandbox.processes()}
        if states.get(instance_name) in ("RUNNING", "STARTING"):
            return False
        try:
            self.sandbox.supervisor().supervisor.startProcess(instance_name)
        except xmlrpc.client.Fault as fault:
            logger.warning("supervisord did not start %s in %s: %s", instance_name, self.name, fault.faultString)
        return True


def _process_start(pid: int) -> float:
    """Return the start time of a process in seconds since the epoch, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            fields = stat_file.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime_file:
            uptime_s = float(uptime_file.read().split()[0])
    except OSError:
        return 0.0
    # Field 22 of /proc/PID/stat is the start time in clock ticks after boot.
    age_s = uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.time() - age_s
