"""stormgate: a chaos and resilience test harness that certifies self-healing platforms."""

from __future__ import annotations

__version__ = "0.1.0"
