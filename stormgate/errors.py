"""Exception hierarchy of stormgate.

Every error that stormgate raises on purpose derives from `StormgateError`. Each message
states the value involved, what failed, and what to do next. Classes that describe bad
input also derive from `ValueError`, so callers can catch them the usual way.
"""

from __future__ import annotations


class StormgateError(Exception):
    """Root of every error that stormgate raises on purpose."""


class UsageError(StormgateError, ValueError):
    """An option, argument or setting has an invalid value."""


class InvalidScenario(StormgateError, ValueError):
    """A scenario file or scenario object fails validation."""


class MissingDependency(StormgateError, RuntimeError):
    """A system binary or Python package that stormgate needs is not installed."""


class PortInUse(StormgateError, OSError):
    """A TCP port that stormgate must bind is already taken."""


class TargetUnreachable(StormgateError, ConnectionError):
    """The target platform, its load balancer or its Prometheus cannot be reached."""


class SandboxError(StormgateError, RuntimeError):
    """The sandbox failed to start, stop or report its state."""


class LoadGeneratorError(StormgateError, RuntimeError):
    """The load generator crashed, failed to start, or produced no statistics."""


class FaultNotEffective(StormgateError, AssertionError):
    """A fault was injected but verification shows that it did not take effect."""


class SafetyViolation(StormgateError, ValueError):
    """A fault plan exceeds a safety limit, such as the share of instances it may hit."""


class InconclusiveResult(StormgateError, AssertionError):
    """An SLO or clock cannot be judged, for example because there is no data."""
