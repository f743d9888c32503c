"""Opening the target that a run certifies, from the command-line options of the pytest plugin."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.ledger import Ledger
from chaos.safety import SafetyPolicy
from chaos.targets.base import Target
from chaos.targets.sandbox import SandboxTarget
from sandbox.environment import Sandbox, SandboxConfig, state_root
from stormgate.cleanup import revert_leftovers
from stormgate.errors import SandboxError, UsageError

logger = logging.getLogger(__name__)

SANDBOX_COVERAGE_SELECTOR = 'up{job="haproxy"}'
"""Series scraped together with the sandbox's SLO counters: its absence means Prometheus saw nothing."""


@dataclass
class OpenedTarget:
    """A target ready for faults, with what its Prometheus SLOs need to know."""

    target: Target
    policy: SafetyPolicy
    """Targets that faults may act on in this run."""
    prometheus_url: str
    scrape_interval_s: float
    coverage_selector: str


def add_target_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--target",
        default="sandbox",
        choices=["sandbox", "kubernetes"],
        help="platform to certify (default: sandbox)",
    )
    group.addoption("--sandbox-name", default="default", help="name of the sandbox to use or start (default: default)")
    group.addoption(
        "--sandbox-replicas",
        type=int,
        default=4,
        help="replicas of a sandbox that the run starts itself; 4 lets half of them fail (default: 4)",
    )
    group.addoption(
        "--sandbox-lb-port",
        type=int,
        default=18080,
        help="load balancer port of a sandbox that the run starts itself, on 127.0.0.1 (default: 18080)",
    )
    group.addoption(
        "--sandbox-prometheus-port",
        type=int,
        default=19090,
        help="Prometheus port of a sandbox that the run starts itself, on 127.0.0.1 (default: 19090)",
    )
    group.addoption("--kube-context", default=None, help="kubeconfig context of the cluster, or in-cluster")
    group.addoption("--kubeconfig", type=Path, default=None, help="kubeconfig file (default: ~/.kube/config)")
    group.addoption(
        "--kube-allowed-context",
        action="append",
        default=[],
        help="context that faults may act on; repeat for several. A context not listed is rejected.",
    )
    group.addoption("--kube-namespace", default=None, help="namespace of the workload under test")
    group.addoption(
        "--kube-allowed-namespace",
        action="append",
        default=[],
        help="namespace that faults may act on; repeat for several (default: --kube-namespace)",
    )
    group.addoption("--kube-selector", default=None, help="label selector of the workload's pods, such as app=web")
    group.addoption(
        "--kube-workload", default="", help="deployment/NAME or statefulset/NAME whose replicas must recover"
    )
    group.addoption(
        "--kube-allow-node-faults", action="store_true", help="allow node cordon and drain (off by default)"
    )
    group.addoption("--load-url", default="", help="Service or Ingress URL that load and floods are sent to")
    group.addoption(
        "--prometheus-scrape-interval",
        type=float,
        default=15.0,
        help="scrape interval of the cluster's Prometheus in seconds (default: 15; the sandbox uses 1)",
    )
    group.addoption(
        "--prometheus-coverage-selector",
        default="up",
        help="series that must be scraped throughout a window for a PromQL verdict (default: up)",
    )


def check_target_options(config: pytest.Config) -> None:
    """Raise pytest.UsageError for a target whose required options are missing, before anything runs."""
    if config.getoption("--target") != "kubernetes":
        return
    required = {
        "--kube-context": config.getoption("--kube-context"),
        "--kube-namespace": config.getoption("--kube-namespace"),
        "--kube-selector": config.getoption("--kube-selector"),
        "--kube-allowed-context": config.getoption("--kube-allowed-context"),
    }
    missing = [option for option, value in required.items() if not value]
    if missing:
        raise pytest.UsageError(
            f"--target kubernetes needs {', '.join(missing)}; the context must also be listed with "
            "--kube-allowed-context so that faults cannot reach a cluster by accident (see docs/kubernetes.md)"
        )


@contextmanager
def open_target(config: pytest.Config) -> Iterator[OpenedTarget]:
    """Open the target that the options name; revert leftovers of crashed runs before yielding it."""
    if config.getoption("--target") == "kubernetes":
        with _open_kubernetes(config) as opened:
            yield opened
        return
    with _open_sandbox(config) as opened:
        yield opened


@contextmanager
def _open_sandbox(config: pytest.Config) -> Iterator[OpenedTarget]:
    name = config.getoption("--sandbox-name")
    started_here = False
    try:
        sandbox = Sandbox.attach(name)
    except SandboxError:
        sandbox = Sandbox(
            SandboxConfig(
                name=name,
                replicas=config.getoption("--sandbox-replicas"),
                lb_port=config.getoption("--sandbox-lb-port"),
                prometheus_port=config.getoption("--sandbox-prometheus-port"),
            )
        )
        sandbox.up()
        started_here = True
    else:
        # A sandbox the user started is never replaced: that would discard their settings.
        try:
            sandbox.wait_ready(timeout_s=10.0)
        except SandboxError as error:
            raise SandboxError(
                f"Sandbox {name} is running but not healthy, so it cannot be certified: {error} "
                f"Restart it with: stormgate sandbox down --name {name} && stormgate sandbox up --name {name}"
            ) from error
    target = SandboxTarget(sandbox)
    revert_leftovers(Ledger(state_root() / "ledger.jsonl"), target)
    try:
        yield OpenedTarget(
            target=target,
            policy=SafetyPolicy(allowed_targets=("sandbox/*",)),
            prometheus_url=config.getoption("--prometheus-url") or sandbox.prometheus_url,
            scrape_interval_s=sandbox.config.scrape_interval_s,
            coverage_selector=SANDBOX_COVERAGE_SELECTOR,
        )
    finally:
        if started_here:
            sandbox.down()


@contextmanager
def _open_kubernetes(config: pytest.Config) -> Iterator[OpenedTarget]:
    from chaos.targets.kubernetes import KubernetesOptions, KubernetesTarget, cleanup_kubernetes

    context = config.getoption("--kube-context")
    namespace = config.getoption("--kube-namespace")
    selector = config.getoption("--kube-selector")
    missing = [
        option
        for option, value in (
            ("--kube-context", context),
            ("--kube-namespace", namespace),
            ("--kube-selector", selector),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"--target kubernetes needs {', '.join(missing)}; see docs/kubernetes.md")
    allowed_contexts = tuple(config.getoption("--kube-allowed-context"))
    if not allowed_contexts:
        raise UsageError(
            f"No context is allowed for faults; pass --kube-allowed-context {context} to certify that context"
        )
    options = KubernetesOptions(
        context=context,
        namespace=namespace,
        selector=selector,
        workload=config.getoption("--kube-workload"),
        load_url=config.getoption("--load-url"),
        prometheus_url=config.getoption("--prometheus-url") or "",
        allowed_contexts=allowed_contexts,
        allowed_namespaces=tuple(config.getoption("--kube-allowed-namespace")) or (namespace,),
        kubeconfig=config.getoption("--kubeconfig"),
        allow_node_faults=config.getoption("--kube-allow-node-faults"),
    )
    target = KubernetesTarget.from_options(options)
    # Leftovers of a killed run are found by label, so they are removed even without the ledger.
    for line in cleanup_kubernetes(
        context=context, namespaces=[namespace], kubeconfig=options.kubeconfig, allowed_contexts=allowed_contexts
    ):
        logger.warning("Removed a leftover of an earlier run: %s", line)
    revert_leftovers(Ledger(state_root() / "ledger.jsonl"), target)
    target.start()
    try:
        yield OpenedTarget(
            target=target,
            policy=SafetyPolicy(allowed_targets=(f"kubernetes/{context}/{namespace}",)),
            prometheus_url=options.prometheus_url,
            scrape_interval_s=config.getoption("--prometheus-scrape-interval"),
            coverage_selector=config.getoption("--prometheus-coverage-selector"),
        )
    finally:
        target.close()
