"""Round deadlines on the device's monotonic clock (shared/timing.py), with a hand-driven clock."""

from __future__ import annotations

from shared.outbox import ANNOUNCE_GRACE_S
from shared.timing import STEP_SLACK_S, AggregatorTime
from shared.wire import RoundAnnounce


class HandClock:
    """Wall and monotonic clocks the test moves by hand."""

    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.wall, self.mono = wall, mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, s: float) -> None:
        self.wall += s
        self.mono += s


def announce(round_id: int, opened_at: float, window: float = 60.0) -> RoundAnnounce:
    return RoundAnnounce(federation="f", round_id=round_id, base_version=0, phase="collect",
                         opened_at=opened_at, deadline=opened_at + window,
                         min_clients=1, target_clients=1)  # fmt: skip


AGG = 1_800_000_000.0  # the aggregator's wall clock when round 0 opens


def test_a_fresh_announcement_gives_the_whole_window_whatever_the_device_wall_clock_says():
    for skew in (-3600.0, 0.0, 3600.0):
        clock = HandClock(AGG + skew)
        times = AggregatorTime(clock)
        a = announce(0, AGG)
        assert times.remaining(a) == 60.0
        clock.advance(45)
        assert times.remaining(a) == 15.0
        clock.wall += 7200  # the device's wall clock jumps mid-round: nothing moves
        assert times.remaining(a) == 15.0
        clock.advance(20)
        assert times.remaining(a) == -5.0


def test_a_retained_announcement_counts_its_age_once_a_fresh_stamp_is_known():
    clock = HandClock(AGG + 3600)
    times = AggregatorTime(clock)
    times.remaining(announce(0, AGG))  # fresh: the estimate is tight
    clock.advance(120)
    late = announce(1, AGG + 100)  # delivered 20 s after it was sent (retained, re-subscribe)
    assert times.remaining(late) == 40.0
    assert times.steps == 0


def test_the_first_announcement_seen_late_is_taken_as_fresh_a_generous_window():
    clock = HandClock(AGG)
    times = AggregatorTime(clock)
    assert times.remaining(announce(3, AGG - 30)) == 60.0  # nothing better is known yet
    clock.advance(5)
    assert times.remaining(announce(4, AGG + 5)) == 60.0  # the next fresh one tightens the estimate


def test_an_aggregator_clock_step_forward_or_back_is_followed_at_its_next_announcement():
    clock = HandClock(AGG)
    times = AggregatorTime(clock)
    first = announce(0, AGG)
    assert times.remaining(first) == 60.0
    clock.advance(10)
    ahead = announce(1, AGG + 10 + 3600)  # the aggregator's clock stepped forward an hour
    assert times.remaining(ahead) == 60.0
    assert times.remaining(first) == 50.0  # a round under way keeps its deadline
    clock.advance(10)
    back = announce(2, AGG + 20 - 3600)  # and back two hours: no retained announcement is that old
    assert times.remaining(back) == 60.0
    assert times.steps == 1


def test_a_stamp_older_than_a_window_plus_the_retained_grace_is_a_step_not_an_age():
    clock = HandClock(AGG)
    times = AggregatorTime(clock)
    times.remaining(announce(0, AGG))
    old_but_possible = announce(1, AGG - 60 - ANNOUNCE_GRACE_S)
    assert times.remaining(old_but_possible) < 0 and times.steps == 0
    impossible = announce(2, AGG - 60 - ANNOUNCE_GRACE_S - STEP_SLACK_S - 61)
    assert times.remaining(impossible) == 60.0 and times.steps == 1
