"""Command-line interface: `stormgate sandbox up|down|status`, `stormgate run`, `stormgate cleanup`.

Exit codes of `stormgate run`, so that CI can tell a failing platform from a harness that
could not judge it:

- 0: every scenario passed;
- 1: at least one scenario failed;
- 2: usage error (an unknown option, an invalid scenario or setting);
- 3: inconclusive: no data, an unreachable source or a broken load generator;
- 4: internal error of the harness.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stormgate.errors import StormgateError, UsageError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_INTERNAL = 4

logger = logging.getLogger("stormgate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stormgate", description="Chaos and resilience certification harness.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    sandbox = commands.add_parser("sandbox", help="manage the local sandbox")
    sandbox_commands = sandbox.add_subparsers(dest="action", required=True)
    up = sandbox_commands.add_parser("up", help="start the sandbox and wait until it is healthy")
    up.add_argument("--name", default="default", help="sandbox name (default: default)")
    up.add_argument("--replicas", type=int, default=3, help="number of service replicas (default: 3)")
    up.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds from a replica's start until it listens (default: 0)"
    )
    up.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="share of /work requests that get HTTP 500, from 0 to 1 (default: 0)",
    )
    up.add_argument("--lb-port", type=int, default=18080, help="load balancer port on 127.0.0.1 (default: 18080)")
    up.add_argument("--prometheus-port", type=int, default=19090, help="Prometheus port on 127.0.0.1 (default: 19090)")
    for action in ("down", "status"):
        command = sandbox_commands.add_parser(action, help=f"{action} the sandbox")
        command.add_argument("--name", default="default", help="sandbox name (default: default)")

    cleanup = commands.add_parser(
        "cleanup", help="revert faults that a crashed run left on the sandbox, and print what was reverted"
    )
    cleanup.add_argument("--sandbox-name", default="default", help="sandbox to clean up (default: default)")
    cleanup.add_argument(
        "--ledger", type=Path, default=None, help="ledger file of injections (default: <state dir>/ledger.jsonl)"
    )
    cleanup.add_argument(
        "--force",
        action="store_true",
        help="also revert faults whose run still runs, or that another host injected",
    )
    cleanup.add_argument(
        "--kube-context",
        default=None,
        help="clean this kube context instead of the sandbox: delete stormgate's NetworkPolicies, uncordon its nodes",
    )
    cleanup.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig file (default: ~/.kube/config)")
    cleanup.add_argument(
        "--kube-namespace",
        action="append",
        default=None,
        help="namespace to clean; repeat for several (default: every namespace)",
    )

    # --help goes to pytest, whose help lists the stormgate options under "stormgate certification".
    run = commands.add_parser("run", help="run the certification suite; extra arguments go to pytest", add_help=False)
    run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="pytest options, such as --seed 7 or -k replica")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "sandbox":
            # `run` leaves logging to pytest's live log, which would print every line twice otherwise.
            logging.basicConfig(
                level=logging.DEBUG if args.verbose else logging.INFO,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                stream=sys.stderr,
            )
            return sandbox_command(args)
        if args.command == "cleanup":
            return cleanup_command(args)
        return run_command([*unknown, *args.pytest_args])
    except UsageError as error:
        print(f"stormgate: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StormgateError as error:
        print(f"stormgate: error: {error}", file=sys.stderr)
        return EXIT_INCONCLUSIVE


def sandbox_command(args: argparse.Namespace) -> int:
    from sandbox.environment import Sandbox, SandboxConfig, parse_config

    if args.action == "up":
        config = parse_config(
            name=args.name,
            replicas=args.replicas,
            startup_delay_s=args.startup_delay,
            error_rate=args.error_rate,
            lb_port=args.lb_port,
            prometheus_port=args.prometheus_port,
        )
        sandbox = Sandbox(config)
        sandbox.up()
        print(f"load balancer: {sandbox.lb_url}")
        print(f"prometheus:    {sandbox.prometheus_url}")
        return EXIT_PASS
    if args.action == "down":
        sandbox = Sandbox(SandboxConfig(name=args.name))
        if not sandbox.exists():
            print(f"Sandbox {args.name} is not running; nothing to stop.")
            return EXIT_PASS
        sandbox.down()
        return EXIT_PASS
    print(json.dumps(Sandbox.attach(args.name).status(), indent=2))
    return EXIT_PASS


def cleanup_command(args: argparse.Namespace) -> int:
    """Revert leftover faults: the sandbox's from the ledger and iptables comments, or a cluster's by label."""
    from chaos.ledger import Ledger
    from chaos.targets.sandbox import SandboxTarget
    from sandbox.environment import Sandbox, state_root
    from stormgate.cleanup import revert_leftovers
    from stormgate.errors import SandboxError

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.kube_context:
        from chaos.targets.kubernetes import cleanup_kubernetes

        lines = cleanup_kubernetes(
            context=args.kube_context, namespaces=args.kube_namespace, kubeconfig=args.kubeconfig
        )
        print("\n".join(lines) or f"Nothing to clean up on kube context {args.kube_context}.")
        return EXIT_PASS
    ledger = Ledger(args.ledger or state_root() / "ledger.jsonl")
    try:
        sandbox = Sandbox.attach(args.sandbox_name)
    except SandboxError:
        # A sandbox that is gone took its processes and its namespace's rules with it.
        target_name = f"sandbox/{args.sandbox_name}"
        open_entries = ledger.open_entries(target_name)
        for entry in open_entries:
            ledger.record_reverted(entry)
            print(f"Marked {entry.fault_id} of run {entry.run_id} reverted: sandbox {args.sandbox_name} is gone.")
        if not open_entries:
            print(f"Nothing to clean up: sandbox {args.sandbox_name} is not running and the ledger has no open fault.")
        return EXIT_PASS
    report = revert_leftovers(ledger, SandboxTarget(sandbox), force=args.force)
    for line in report.lines():
        print(line)
    return EXIT_INTERNAL if report.failed else EXIT_PASS


def run_command(pytest_args: list[str]) -> int:
    """Run pytest on the scenarios folder and map this run's verdict to an exit code."""
    import pytest

    from reports.record import new_run_id

    scenario_dir = Path(__file__).resolve().parent.parent / "scenarios"
    selected = [arg for arg in pytest_args if not arg.startswith("-") and Path(arg).exists()]
    arguments = [*pytest_args] if selected else [str(scenario_dir), *pytest_args]
    # The CLI names the run, so that it reads this run's record and never an older one.
    run_id = _option_value(arguments, "--run-id") or new_run_id()
    if _option_value(arguments, "--run-id") is None:
        arguments += ["--run-id", run_id]
    # INFO shows the progress of every phase while the suite runs.
    options = ["-p", "stormgate.plugin", "--rootdir", str(scenario_dir.parent), "-o", "log_cli_level=INFO"]
    code = pytest.main([*options, *arguments])
    if code == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    if code in (pytest.ExitCode.INTERNAL_ERROR, pytest.ExitCode.INTERRUPTED):
        return EXIT_INTERNAL

    report_dir = _option_value(arguments, "--report-dir")
    record_path = (Path(report_dir) if report_dir else Path.cwd() / "runs" / run_id) / "run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record is None or record.get("run_id") != run_id:
        print(f"stormgate: error: run {run_id} wrote no run.json, so there is no verdict", file=sys.stderr)
        return EXIT_FAIL if code == pytest.ExitCode.TESTS_FAILED else EXIT_INCONCLUSIVE
    if record.get("usage_errors"):
        return EXIT_USAGE
    verdict = {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(record["verdict"], EXIT_INCONCLUSIVE)
    if verdict == EXIT_PASS and code != pytest.ExitCode.OK:
        # Every scenario passed, but another test of the session failed.
        return EXIT_FAIL
    return verdict


def _option_value(arguments: list[str], name: str) -> str | None:
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
