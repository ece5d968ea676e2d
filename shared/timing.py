"""Round deadlines on the device's own monotonic clock, whatever its wall clock says.

A round announcement carries the aggregator's wall-clock ``opened_at`` and ``deadline``. Comparing them
with the device's wall clock breaks when that clock is off (a device an hour ahead sees every round as
over and sits them all out) or jumps mid-round. So the device never does: it keeps an estimate of the
aggregator's clock *relative to its own monotonic clock* and converts each round's stamps once, when
the round's announcement first arrives.

The estimate: a message stamped ``s`` by the aggregator and received at local monotonic time ``m`` was
sent at or before ``m`` (messages are never early), so ``s - m`` is a lower bound on (aggregator wall -
local monotonic); the largest bound seen is the estimate (a fresh announcement makes it tight; a retained
one delivered late only a looser bound). A stamp far *below* the estimate -- older than any retained
announcement can be, since the broker drops it ``ANNOUNCE_GRACE_S`` after its deadline -- means the
aggregator's own clock stepped back: the estimate restarts from it. A device's wall clock plays no part,
so its skew or jumps change nothing; an aggregator's jump shifts the estimate at its next announcement.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.clock import SYSTEM_CLOCK, Clock
from shared.outbox import ANNOUNCE_GRACE_S
from shared.wire import RoundAnnounce

#: Extra slack, beyond a round's window and the retained grace, before a stamp counts as a clock step.
STEP_SLACK_S = 30.0


@dataclass(frozen=True)
class RoundTimes:
    """One round's stamps mapped onto the device's monotonic clock."""

    shift: float  # local monotonic = aggregator stamp + shift
    clock: Clock

    def local(self, stamp: float) -> float:
        """The local monotonic time of the aggregator's wall-clock ``stamp`` of this round."""
        return stamp + self.shift

    def until(self, stamp: float) -> float:
        """Seconds from now until ``stamp`` (negative once past)."""
        return self.local(stamp) - self.clock.monotonic()


class AggregatorTime:
    """The device's estimate of the aggregator's wall clock; one :class:`RoundTimes` per round."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.offset: float | None = None  # aggregator wall - local monotonic
        #: The aggregator's clock steps back noticed (a stamp far older than any retained one can be).
        self.steps = 0
        self._rounds: dict[tuple[int, float, float], RoundTimes] = {}

    def observe(self, stamp: float, max_age_s: float) -> None:
        """A message stamped ``stamp`` that can be at most ``max_age_s`` old has just arrived."""
        bound = stamp - self.clock.monotonic()
        if self.offset is None or bound > self.offset:
            self.offset = bound
        elif bound < self.offset - max_age_s - STEP_SLACK_S:
            self.offset = bound
            self.steps += 1

    def round(self, announce: RoundAnnounce) -> RoundTimes:
        """The round's times, fixed when its announcement is first seen (so a later step of either clock
        does not move the deadlines of a round under way)."""
        key = (announce.round_id, announce.opened_at, announce.deadline)
        times = self._rounds.get(key)
        if times is None:
            window = announce.deadline - announce.opened_at
            self.observe(announce.opened_at, window + ANNOUNCE_GRACE_S)
            assert self.offset is not None
            times = self._rounds[key] = RoundTimes(-self.offset, self.clock)
            for old in [k for k in self._rounds if k[0] < announce.round_id - 4]:
                del self._rounds[old]
        return times

    def remaining(self, announce: RoundAnnounce) -> float:
        """Seconds left in the round's window on this device's clock (negative once over)."""
        return self.round(announce).until(announce.deadline)


__all__ = ["AggregatorTime", "RoundTimes"]
