"""End-to-end delivery of a device's contributions: kept until the aggregator confirms, re-sent on cue.

A broker's PUBACK only says the broker took a message; a broker crash before the aggregator read it, or
a publish stranded on a connection that died, loses it. So a device treats a contribution as delivered
only when the aggregator moves on: the roster confirms the keys, the U2 notice the share batch, the U3
notice the masked input, and the next round's announcement the reveal
or the plain update. Until then the :class:`Deliveries` ledger keeps it.

The pair-seed step is a contribution of its own: a device answers the aggregator's signed
:class:`~shared.wire.seeds.SeedRequest` with a :class:`~shared.wire.seeds.SeedReveal` on the unmask topic
(the aggregator tells the two apart by message type), but the ledger keeps it under the kind
:data:`SEEDS`, beside the unmask reveal rather than in its place: the request is its cue and the next
round's announcement confirms both. The request settles nothing: it lists no devices, and the unmask
reveal it follows is confirmed like any other, by the next announcement.

When to re-send: whenever the aggregator's message that opens a phase arrives *again* -- it does on every
reconnect of the device (the broker re-delivers the retained round, roster and notice on re-subscribe)
and after every reconnect of the aggregator (it re-publishes the open phase's messages) -- the device
re-sends its contribution to that phase if it is still outstanding and not being sent right now. The
aggregator deduplicates by device, round and phase, so a re-send is always safe; a re-send that finds the
phase closed is refused there and costs only its bytes (counted in :attr:`DeliveryStats.bytes_resent`).

A failed publish (its deadline passed during a long outage) does not lose the contribution either: it
stays in the ledger and goes out at the next cue, while the phase is still open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field

from shared.chunking import split, transfer_id_for
from shared.errors import FedmqError, ProtocolError
from shared.outbox import Outbox, Publisher
from shared.topics import KEYS, MASKED, SECURE_ORDER, SHARES, UNMASK, UPDATE, Topics
from shared.wire import ChunkReceipt, Message, RoundAnnounce, decode, encode
from shared.wire.roster import CompactRoster
from shared.wire.secagg import Roster, SurvivorList
from shared.wire.seeds import SeedRequest, SeedReveal

log = logging.getLogger(__name__)

#: The ledger kind of a seed reveal (the answer to a ``SeedRequest``). Not a topic kind: it travels on the
#: unmask topic. Outside :data:`SECURE_ORDER`, so its request settles no earlier phase.
SEEDS = "seeds"
#: Re-sends of one contribution that the aggregator's receipts may ask for (a gap after the manifest).
MAX_RECEIPT_RESENDS = 4

#: Sends a contribution, reporting each publication's size to its argument as it goes (a resumed upload
#: skips what the aggregator holds, so a re-send may publish less than the whole message).
Transmit = Callable[[Callable[[int], None]], Awaitable[None]]


@dataclass
class Contribution:
    round_id: int
    kind: str
    size: int
    transmit: Transmit
    sending: bool = False
    attempts: int = 0
    #: A cue came while a send was under way: that send may be stranded (a dead connection, a broker
    #: that crashed before forwarding), so send once more when it ends.
    cued: bool = False
    #: Re-sends asked for by the aggregator's receipts (bounded: :data:`MAX_RECEIPT_RESENDS`).
    by_receipt: int = 0


@dataclass
class DeliveryStats:
    """What the outbox did (soak benchmark, chaos tests)."""

    sent: int = 0
    resent: int = 0
    #: Bytes published by re-sends (a chunked re-send skips the chunks a receipt says the aggregator holds).
    bytes_resent: int = 0
    #: Bytes a re-send did not send again because a receipt said the aggregator held them.
    bytes_skipped: int = 0
    #: Publishes that failed (deadline) and were kept for a re-send.
    failed: int = 0
    #: Contributions whose phase ended before they were confirmed (the aggregator moved on without them).
    expired: int = 0
    confirmed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Deliveries:
    """A device's unconfirmed contributions, one per (round, phase kind)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._entries: dict[tuple[int, str], Contribution] = {}
        self.stats = DeliveryStats()

    def __len__(self) -> int:
        return len(self._entries)

    def outstanding(self) -> list[tuple[int, str]]:
        """(round, kind) of every contribution not yet confirmed, oldest round first."""
        return sorted(self._entries)

    async def deliver(self, round_id: int, kind: str, size: int, transmit: Transmit) -> bool:
        """Keep the contribution, then send it; True once the broker took it.

        A failed send is logged, kept and re-sent at the next cue; it never raises a FedmqError, so the
        caller's protocol state moves on as if sent (the message exists and will get there).
        """
        entry = Contribution(round_id, kind, size, transmit)
        self._entries[(round_id, kind)] = entry
        self.stats.sent += 1
        return await self._send(entry)

    def opened(self, round_id: int, kind: str, members: Collection[str] | None = None) -> Contribution | None:
        """The aggregator (re)published the message that opens phase ``kind`` of ``round_id``.

        Earlier phases of the round are thereby closed: confirmed when ``members`` (the roster's or
        notice's devices) lists this device, expired otherwise. Returns the entry for ``kind`` to re-send,
        if it is outstanding and not being sent now.
        """
        if kind in SECURE_ORDER:
            for earlier in SECURE_ORDER[: SECURE_ORDER.index(kind)]:
                self._settle(round_id, earlier, members is None or self.device in members)
        entry = self._entries.get((round_id, kind))
        if entry is None:
            return None
        if entry.sending:
            entry.cued = True
            return None
        return entry

    def get(self, round_id: int, kind: str) -> Contribution | None:
        return self._entries.get((round_id, kind))

    def round_ended(self, round_id: int) -> None:
        """Rounds up to ``round_id`` are over (a newer round was announced)."""
        for key in [k for k in self._entries if k[0] <= round_id]:
            self._settle(*key, confirmed=True)

    async def resend(self, entry: Contribution) -> bool:
        """Send ``entry`` again if it is still outstanding (idempotent at the aggregator)."""
        if self._entries.get((entry.round_id, entry.kind)) is not entry or entry.sending:
            return False
        self.stats.resent += 1
        self.stats.by_kind[entry.kind] = self.stats.by_kind.get(entry.kind, 0) + 1
        log.info("device=%s re-sends its %s of round %d (attempt %d)", self.device, entry.kind,
                 entry.round_id, entry.attempts + 1)  # fmt: skip
        return await self._send(entry)

    async def _send(self, entry: Contribution) -> bool:
        entry.sending = True
        entry.attempts += 1
        try:
            await entry.transmit(self._resent_bytes if entry.attempts > 1 else _ignore)
            sent = True
        except FedmqError as exc:
            self.stats.failed += 1
            log.warning("device=%s round=%d %s not sent (%s); kept for a re-send", self.device,
                        entry.round_id, entry.kind, exc)  # fmt: skip
            sent = False
        finally:
            entry.sending = False
        if entry.cued:
            entry.cued = False
            return await self.resend(entry)
        return sent

    def _resent_bytes(self, size: int) -> None:
        self.stats.bytes_resent += size

    def _settle(self, round_id: int, kind: str, confirmed: bool) -> None:
        if self._entries.pop((round_id, kind), None) is None:
            return
        if confirmed:
            self.stats.confirmed += 1
        else:
            self.stats.expired += 1
            log.info("device=%s round=%d: the aggregator closed the %s phase without this device",
                     self.device, round_id, kind)  # fmt: skip


def phase_opened_by(kind_of_message: str, secure: bool, notice_phase: str | None = None) -> str | None:
    """Which device contribution an aggregator message asks for: the round announcement opens KEYS
    (secure) or UPDATE (plain), the roster SHARES, the U2 notice MASKED, the U3 notice UNMASK and the
    pair-seed request (``kind_of_message`` "seed_request") SEEDS."""
    if kind_of_message == "round":
        return KEYS if secure else UPDATE
    if kind_of_message == "roster":
        return SHARES
    if kind_of_message == "notice":
        return {"shared": MASKED, "masked": UNMASK}.get(notice_phase or "")
    if kind_of_message == "seed_request":
        return SEEDS if secure else None
    return None


def ledger_kind(kind: str, message: Message) -> str:
    """The ledger kind of a contribution sent on topic kind ``kind``: :data:`SEEDS` for a seed reveal (it
    shares the unmask topic with the unmask reveal, which it must not replace), else ``kind``."""
    return SEEDS if isinstance(message, SeedReveal) else kind


def cue_of(
    topics: Topics, topic: str, payload: bytes, secure: bool
) -> tuple[str, int, list[str] | None] | None:
    """(kind to re-send, round, members listed) for a phase-opening aggregator message, else None.

    The round announcement opens KEYS (secure) or UPDATE (plain), the roster SHARES, the U2 notice MASKED,
    the U3 notice UNMASK and a pair-seed request on the notice topic SEEDS (members None: it lists no
    devices). Anything unreadable is no cue (the client's own handling reports it, and checks the
    request's signature before answering it; a cue only ever re-sends this device's own bytes).
    """
    try:
        if topic == topics.round:
            announce = decode(payload, RoundAnnounce)
            return (KEYS if secure else UPDATE), announce.round_id, None
        if topic == topics.roster:
            roster: Roster | CompactRoster = decode(payload, (Roster, CompactRoster))
            return SHARES, roster.round, roster.member_ids
        if topic == topics.notice:
            notice: SurvivorList | SeedRequest = decode(payload, (SurvivorList, SeedRequest))
            if isinstance(notice, SeedRequest):
                kind = phase_opened_by("seed_request", secure)
                return (kind, notice.round, None) if kind is not None else None
            kind = phase_opened_by("notice", secure, notice.phase)
            return (kind, notice.round, list(notice.devices)) if kind is not None else None
    except FedmqError:
        return None
    return None


def _ignore(size: int) -> None:
    pass


class DeliveringOutbox(Outbox):
    """The device's outbox: every round message goes through :class:`Deliveries`, so it is kept until
    the aggregator settles it and can be re-sent; a publish that fails is kept, not raised (returns 0).

    Chunked uploads resume end to end: the aggregator's :class:`ChunkReceipt` says which chunks it holds,
    and a (re-)send skips those (``aggregator/receipts.py``); a receipt that shows chunks lost after the
    manifest arrived asks for a re-send of just those."""

    def __init__(self, transport: Publisher, topics: Topics, device: str, *, chunk_limit: int) -> None:
        super().__init__(transport, topics, chunk_limit=chunk_limit)
        self.deliveries = Deliveries(device)
        self.device = device
        #: The latest receipt per (round, kind).
        self.receipts: dict[tuple[int, str], ChunkReceipt] = {}

    async def round_message(
        self, round_id: int, kind: str, sender: str, message: Message, *, expiry_s: float
    ) -> int:
        until = time.monotonic() + expiry_s
        topic = self.topics.round_msg(round_id, kind, sender)
        payload = encode(message)  # once: a re-send sends these same bytes
        frames = split(payload, self._frame_limit(topic))
        transfer = transfer_id_for(payload) if len(frames) > 1 else b""
        stats = self.deliveries.stats

        async def transmit(published: Callable[[int], None]) -> None:
            for frame in frames[1:] + frames[:1]:  # chunks first, then the manifest
                receipt = self.receipts.get((round_id, kind))
                if receipt is not None and receipt.transfer_id == transfer:
                    if receipt.complete:
                        break
                    if frame.chunk is not None and receipt.holds(frame.chunk):
                        stats.bytes_skipped += len(frame.payload)
                        continue
                target = topic if frame.chunk is None else f"{topic}/c/{frame.chunk}"
                expiry_s = max(1.0, until - time.monotonic())
                await self.transport.publish(target, frame.payload, expiry_s=expiry_s)
                published(len(frame.payload))

        await self.deliveries.deliver(round_id, ledger_kind(kind, message), len(payload), transmit)
        return len(frames)

    def on_receipt(self, receipt: ChunkReceipt) -> Coroutine[object, object, None] | None:
        """The aggregator's word on a chunked upload of ours: kept for the next (re-)send; when it shows
        chunks lost after the manifest and the upload is not being sent, the re-send of what is missing."""
        if receipt.sender != self.device:
            raise ProtocolError(f"receipt for {receipt.sender!r}")
        key = (receipt.round_id, receipt.kind)
        self.receipts[key] = receipt
        for old in [k for k in self.receipts if k[0] < receipt.round_id - 2]:
            del self.receipts[old]
        entry = self.deliveries.get(*key)
        lost = receipt.manifest and not receipt.complete  # the manifest came, some chunks never did
        if not lost or entry is None or entry.by_receipt >= MAX_RECEIPT_RESENDS:
            return None
        if entry.sending:
            entry.cued = True
            return None
        entry.by_receipt += 1
        return self._resend(entry)

    def cue(self, topic: str, payload: bytes, secure: bool) -> Coroutine[object, object, None] | None:
        """An incoming message: when it (re)opens a phase, settle the earlier ones (and earlier rounds on a
        round announcement) and return the re-send of what this phase still lacks, to run as a task."""
        found = cue_of(self.topics, topic, payload, secure)
        if found is None:
            return None
        kind, round_id, members = found
        if kind in (KEYS, UPDATE):
            self.deliveries.round_ended(round_id - 1)
        entry = self.deliveries.opened(round_id, kind, members)
        return self._resend(entry) if entry is not None else None

    async def _resend(self, entry: Contribution) -> None:
        await self.deliveries.resend(entry)


__all__ = ["SEEDS", "Deliveries", "DeliveringOutbox", "DeliveryStats", "ledger_kind", "phase_opened_by"]
