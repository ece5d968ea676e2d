"""Retained messages on device topics: never processed, always cleared.

A device may publish with the retain flag on any topic it may write. The broker then stores the message
and re-sends it to the aggregator on every (re)subscription, so a rogue device could make the aggregator
re-read thousands of stale messages after each reconnect. Nothing a device sends on a round topic is
meant to be retained (only its presence on ``fl/<fed>/status/<id>`` is), so the aggregator drops any
retained round message it receives (counted as an offence of the topic's sender) and clears it at the
broker by publishing an empty retained payload there (the aggregator's account may write ``fl/#``).
"""

from __future__ import annotations

import asyncio
import logging

from shared.errors import FedmqError
from shared.mqtt import MqttConnection
from shared.offences import Offences
from shared.supervision import guarded
from shared.topics import Topics

log = logging.getLogger(__name__)

#: Offence rule of a retained message on a device's round topic.
RETAINED_DEVICE_MESSAGE = "retained-device-message"


class RetainedGuard:
    """Drops retained round messages and clears them at the broker (at most one clear per topic in flight)."""

    def __init__(self, topics: Topics, offences: Offences) -> None:
        self.topics = topics
        self.offences = offences
        self.cleared = 0
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def intercept(self, conn: MqttConnection | None, topic: str, retain: bool, payload: bytes) -> bool:
        """True when the message was a retained device message (dropped, and a clear scheduled)."""
        if not payload:  # our own clear coming back (an empty payload is never a message): ignore it
            return True
        if not retain:
            return False
        try:
            sender = self.topics.parse_round(topic).sender
        except FedmqError:
            sender = topic
        reason = "retained message on a round topic"
        self.offences.record(sender, RETAINED_DEVICE_MESSAGE, reason, context=topic)
        if conn is not None and topic not in self._pending:
            self._pending.add(topic)
            task = asyncio.create_task(guarded(self._clear(conn, topic), where=f"clear retained {topic}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _clear(self, conn: MqttConnection, topic: str) -> None:
        try:
            await conn.publish(topic, b"", retain=True, timeout=10.0)
            self.cleared += 1
        finally:
            self._pending.discard(topic)
