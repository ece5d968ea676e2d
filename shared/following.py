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
from collections.abc import Awaitable

from shared.mqtt import MqttConnection
from shared.topics import Topics
from shared.wire import PHASE_KEYS, RoundAnnounce

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

    async def join_then(self, start: Awaitable[None]) -> None:
        """Join (subscription acknowledged) before ``start`` advertises keys: the keys phase may close,
        and the roster go out, as soon as the last advert arrives."""
        await self.join()
        await start

    async def settle(self, announce: RoundAnnounce, joined: int | None) -> None:
        """After a secure round's announcement: leave unless this device joined it (``joined``: the
        round it is in, if any) -- it sits the round out and needs none of its roster."""
        if announce.phase == PHASE_KEYS and joined != announce.round_id:
            await self.leave()

    async def leave(self) -> None:
        if not self.following:
            return
        self.following = False
        await self.conn.unsubscribe(self.topics.roster)
        await self.conn.unsubscribe(self.topics.notice)


__all__ = ["RoundFollowing"]
