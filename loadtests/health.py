"""Checks that the load generator itself was healthy, read from its per-second records.

A problem found here means the client statistics do not measure the platform alone,
so the harness must not pass a phase that has one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from loadtests.records import CONNECTION_REFUSED_KIND, SecondRecord

SATURATED_CPU_PERCENT = 90.0
"""CPU use of one Locust process, in percent of one core, above which it is saturated."""
SATURATED_FOR_S = 5
"""Consecutive saturated seconds that make a health problem; shorter bursts are tolerated."""
SILENT_WORKER_S = 4
"""Seconds a process may lag behind the newest record of the run before it counts as gone."""
REFUSED_FOR_S = 3
"""Consecutive seconds in which every request was refused that make a health problem."""


def find_health_problems(records: Sequence[SecondRecord], *, host: str) -> list[str]:
    """Return one sentence per problem: a vanished process, a refusing target, a saturated CPU."""
    if not records:
        return [f"Locust wrote no per-second statistics for the run against {host}."]
    by_source: dict[str, list[SecondRecord]] = defaultdict(list)
    for record in records:
        by_source[record.source_key].append(record)
    newest = max(record.ts for record in records)

    problems: list[str] = []
    for source, own in sorted(by_source.items()):
        own.sort(key=lambda record: record.ts)
        if newest - own[-1].ts >= SILENT_WORKER_S:
            problems.append(
                f"Locust process {source} stopped sending statistics at {own[-1].ts} "
                f"while others went on until {newest}; the worker disappeared or hung."
            )
        saturated = _longest_run(own, _is_saturated)
        if saturated is not None and saturated[1] >= SATURATED_FOR_S:
            problems.append(
                f"Locust process {source} used more than {SATURATED_CPU_PERCENT:.0f}% CPU for {saturated[1]} s "
                f"from {saturated[0]}; the generator was saturated, so latencies include its own delay. "
                "Add processes or workers."
            )
    refused = _longest_refused_run(records)
    if refused is not None and refused[1] >= REFUSED_FOR_S:
        problems.append(
            f"The target {host} refused every connection for {refused[1]} s from {refused[0]}; "
            "check that it is running and listening."
        )
    return problems


def _is_saturated(record: SecondRecord) -> bool:
    return record.cpu_percent is not None and record.cpu_percent > SATURATED_CPU_PERCENT


def _longest_refused_run(records: Sequence[SecondRecord]) -> tuple[int, int] | None:
    """Return the longest run of seconds in which every request of every process was refused."""
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        for endpoint in record.endpoints.values():
            totals[record.ts][0] += endpoint.requests
            totals[record.ts][1] += endpoint.failures.get(CONNECTION_REFUSED_KIND, 0)
    refused = [second for second, (requests, failed) in totals.items() if requests > 0 and failed == requests]
    return _longest_streak(refused)


def _longest_run(records: Sequence[SecondRecord], condition: Callable[[SecondRecord], bool]) -> tuple[int, int] | None:
    """Return the first second and length of the longest run of consecutive seconds meeting `condition`."""
    return _longest_streak([record.ts for record in records if condition(record)])


def _longest_streak(marked: Sequence[int]) -> tuple[int, int] | None:
    seconds = sorted(set(marked))
    best: tuple[int, int] | None = None
    start = previous = None
    for second in seconds:
        if previous is None or second != previous + 1:
            start = second
        previous = second
        assert start is not None
        length = second - start + 1
        if best is None or length > best[1]:
            best = (start, length)
    return best
