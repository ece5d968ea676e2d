"""Follow a secure round's roster and notices only while taking part in it.

The roster names every member of a round with its keys (O(cohort) bytes) and the notices list the
survivors. A device that subscribed to ``fl/<fed>/round/#`` for good received both for every round,
also the rounds it sat out: with 1,000 devices connected and cohorts of 50, each participant's share of
that traffic was 9x what it was with 100 connected (``benchmarks/scale.py``, ``docs/scale.md``). So a
device subscribes to the announcement ``fl/<fed>/round`` only, and to the roster and notice topics
from just before it advertises keys until it sits a round out; the aggregator clears both retained
messages when a secure round ends, so joining a round never brings the previous round's roster.

A device that keeps the old ``round/#`` subscription (an older client) stays correct; it receives more.
"""

from __future__ import annotations

import logging

from shared.mqtt import MqttConnection
from shared.topics import Topics

log = logging.getLogger(__name__)


class RoundFollowing:
    """``await following.join()`` before advertising keys; ``await following.leave()`` when sitting out."""

    def __init__(self, conn: MqttConnection, topics: Topics) -> None:
        self.conn = conn
        self.topics = topics
        self.following = False

    async def join(self) -> None:
        """Subscribe to the roster and notices (acknowledged before this returns, when connected)."""
        if self.following:
            return
        self.following = True
        await self.conn.subscribe(self.topics.roster)
        await self.conn.subscribe(self.topics.notice)

    async def leave(self) -> None:
        if not self.following:
            return
        self.following = False
        await self.conn.unsubscribe(self.topics.roster)
        await self.conn.unsubscribe(self.topics.notice)


__all__ = ["RoundFollowing"]
