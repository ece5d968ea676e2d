"""Per-sender rate limits (before decoding) and rate-limited offence logging, on a fake clock."""

from __future__ import annotations

import logging

import pytest

from shared.offences import OTHER, Offences
from shared.ratelimit import RateLimited, SenderLimits


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flooding_sender_is_limited_and_others_are_not() -> None:
    clock = Clock()
    limits = SenderLimits(
        messages_per_s=10, burst_messages=20, burst_bytes=10_000, bytes_per_s=1_000, clock=clock
    )
    refused = 0
    for _ in range(1_000):
        try:
            limits.check("rogue", 10)
        except RateLimited:
            refused += 1
    assert refused == 980  # the burst, then nothing until the clock moves
    limits.check("honest", 10)  # another sender's budget is untouched
    clock.now = 1.0
    for _ in range(10):
        limits.check("rogue", 10)  # refilled at 10 messages/s
    with pytest.raises(RateLimited):
        limits.check("rogue", 10)


def test_bytes_are_budgeted_too() -> None:
    clock = Clock()
    limits = SenderLimits(burst_messages=1_000, burst_bytes=1_000, bytes_per_s=100, clock=clock)
    limits.check("rogue", 900)
    with pytest.raises(RateLimited):
        limits.check("rogue", 200)
    clock.now = 1.0
    limits.check("rogue", 200)


def test_tracked_senders_are_bounded() -> None:
    limits = SenderLimits(max_senders=100)
    for i in range(1_000):
        limits.check(f"s{i}", 1)
    assert len(limits._senders) == 100


def test_one_line_per_sender_and_rule_per_interval(caplog) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    offences = Offences(interval_s=60, clock=clock)
    for _ in range(10_000):
        offences.record("rogue", "WireError", "not valid msgpack")
    offences.record("honest", "WireError", "one bad message")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("offence from=")]
    assert len(lines) == 2
    assert offences.by_sender() == {"honest": {"WireError": 1}, "rogue": {"WireError": 10_000}}
    clock.now = 61
    offences.record("rogue", "WireError", "not valid msgpack")
    last = [r.getMessage() for r in caplog.records][-1]
    assert "(+9999 more since the last line)" in last


def test_distinct_senders_are_capped() -> None:
    offences = Offences(max_senders=10)
    for i in range(100):
        offences.record(f"topic-{i}", "WireError", "x")
    assert len(offences.by_sender()) == 11 and offences.by_sender()[OTHER] == {"WireError": 90}
