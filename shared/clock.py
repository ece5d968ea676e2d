"""Clocks, injectable: the wall clock for stamps, the monotonic clock for every wait and window.

A device's or the aggregator's wall clock may be wrong by hours or jump (NTP steps, a user changing it,
a phone coming back from airplane mode); neither side ever compares its own wall clock with the other's.
Windows are measured on the monotonic clock, and a device maps the aggregator's stamps onto its own
monotonic clock (``shared.timing``). Components take a :class:`Clock` so tests can give one process
a skewed or jumping wall clock without touching ``time`` for the whole process.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock UNIX time (for stamps on the wire and in logs)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (for deadlines and windows)."""
        ...


class SystemClock:
    """The process's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()


class SkewedClock:
    """A wall clock ``offset_s`` away from the system's, that :meth:`jump` moves; the monotonic clock is
    the system's (it never jumps). For chaos tests and the simulator."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s

    def jump(self, by_s: float) -> None:
        """Step the wall clock by ``by_s`` seconds (negative: backwards), as an NTP step would."""
        self.offset_s += by_s

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic()


__all__ = ["SYSTEM_CLOCK", "Clock", "SkewedClock", "SystemClock"]
