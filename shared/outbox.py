"""The one publishing seam: which topic, chunked or whole, retained or not, for how long.

Both sides publish only through an :class:`Outbox`. It encodes a wire message, splits it into chunks
above the chunk limit (chunks first, then the manifest, so a subscriber that sees the manifest finds its
chunks already retained; above the broker's maximum packet size when it announced one) and applies the
topic tree's retain and expiry rules. The transport is anything
with ``publish(topic, payload, *, retain, expiry_s)`` (an :class:`shared.mqtt.MqttConnection`, or a list
in a test), so the round engine and the device carry no topic strings and no chunking code.
"""

from __future__ import annotations

from typing import Protocol

from shared.chunking import DEFAULT_CHUNK_LIMIT, split
from shared.topics import Topics
from shared.wire import Message, ModelUpdate, RoundAnnounce, RoundResult, encode
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import Roster, ShareBatch, SurvivorList
from shared.wire.seeds import SeedRequest

#: Retained announcements outlive their deadline by this long, then the broker drops them.
ANNOUNCE_GRACE_S = 60.0


class Publisher(Protocol):
    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry_s: float | None = None
    ) -> None: ...


class Outbox:
    """Publishes a federation's messages over ``transport``; raises the transport's FedmqError."""

    def __init__(self, transport: Publisher, topics: Topics, *, chunk_limit: int = DEFAULT_CHUNK_LIMIT):
        self.transport = transport
        self.topics = topics
        self.chunk_limit = chunk_limit

    def _frame_limit(self, topic: str) -> int:
        """The chunk limit, lowered to the broker's maximum packet size when the transport knows it
        (:meth:`shared.mqtt.MqttConnection.frame_limit`)."""
        frame_limit = getattr(self.transport, "frame_limit", None)
        return int(frame_limit(topic, self.chunk_limit)) if frame_limit is not None else self.chunk_limit

    async def _framed(
        self,
        topic: str,
        chunk_topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> int:
        frames = split(payload, self._frame_limit(topic))
        for frame in frames[1:] + frames[:1]:
            target = topic if frame.chunk is None else f"{chunk_topic}/c/{frame.chunk}"
            await self.transport.publish(target, frame.payload, retain=retain, expiry_s=expiry_s)
        return len(frames)

    # -- aggregator -> devices ---------------------------------------------------------------------

    async def snapshot(self, payload: bytes) -> None:
        """The full snapshot (already encoded and signed), retained for newcomers."""
        await self._framed(self.topics.model, self.topics.model, payload, retain=True)

    async def delta(self, payload: bytes) -> None:
        """The update for holders of the previous version, retained."""
        await self._framed(self.topics.delta, self.topics.delta, payload, retain=True)

    async def announce(self, announce: RoundAnnounce, *, now: float) -> None:
        """The (signed) announcement, retained until shortly after its deadline."""
        remaining = max(1.0, announce.deadline - now)
        await self.transport.publish(
            self.topics.round, encode(announce), retain=True, expiry_s=remaining + ANNOUNCE_GRACE_S
        )

    async def result(self, result: RoundResult) -> None:
        await self.transport.publish(self.topics.result, encode(result), retain=True)

    async def roster(self, roster: Roster | CompactRoster) -> None:
        await self.transport.publish(self.topics.roster, encode(roster), retain=True)

    async def notice(self, notice: SurvivorList | SeedRequest) -> None:
        await self.transport.publish(self.topics.notice, encode(notice), retain=True)

    async def clear_round_messages(self) -> None:
        """Clear the retained roster and notice when a secure round ends: a device subscribes to them as
        it joins a round (``shared/following.py``) and must not be sent the last round's roster."""
        await self.transport.publish(self.topics.roster, b"", retain=True)
        await self.transport.publish(self.topics.notice, b"", retain=True)

    async def inbox(self, device: str, batch: ShareBatch | NeighbourKeys) -> None:
        """Shares, or the neighbour keys of a compact roster, addressed to one device (not retained: they
        are for this round only)."""
        inbox = self.topics.inbox(device)
        await self._framed(inbox, inbox, encode(batch))

    # -- device -> aggregator ----------------------------------------------------------------------

    async def round_message(
        self, round_id: int, kind: str, sender: str, message: Message, *, expiry_s: float
    ) -> int:
        """A device's message of ``kind`` for round ``round_id``; expires with the round's window."""
        topic = self.topics.round_msg(round_id, kind, sender)
        return await self._framed(topic, topic, encode(message), expiry_s=expiry_s)

    async def update(self, update: ModelUpdate, *, expiry_s: float) -> int:
        """A plain-mode update."""
        return await self.round_message(update.round_id, "update", update.sender, update, expiry_s=expiry_s)
