"""Light devices: the real secure-round path of a device without torch, many per process.

Scale measurements need thousands of connected devices on a 2-core machine, where a torch device each is
out of reach. A :class:`LightDevice` keeps everything a device puts on the wire real and drops only the
training: its delta is synthetic (Gaussian, seeded), and from there it runs the product's own parts --
the round announcement's signature check (:func:`shared.signing.verify`), the uplink codec
(:class:`shared.codec.UpdateEncoder` and :func:`shared.codec.pack`), the SecAgg+ client
(:class:`shared.secagg.SecAggClient`: keys, sealed share bundles, masking, reveals) and one
:class:`shared.mqtt.MqttConnection` per device with chunked publication (:func:`shared.mqtt.publish_framed`).
It follows the same message sequence as :class:`edge_client.secure.SecureParticipation` (keys -> shares ->
masked -> unmask), and counts every byte it sends and receives by kind, so a benchmark can tell protocol
bytes from the model update.

Which devices join a round is a deterministic rotation (:func:`rotation_joins`): exactly ``cohort``
devices advertise in each round, so every phase closes on its count rather than at a deadline and the
latency measured is the system's, not a window's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.signing
import numpy as np

from shared.chunking import DEFAULT_CHUNK_LIMIT, Reassembler
from shared.codec import UpdateEncoder, pack
from shared.errors import FedmqError, ProtocolError
from shared.following import RoundFollowing
from shared.mqtt import MqttConfig, MqttConnection, publish_framed
from shared.secagg import SecAggClient
from shared.secagg.roster import RosterJoin
from shared.signing import verify
from shared.supervision import guarded
from shared.topics import Topics
from shared.wire import PHASE_KEYS, Message, RoundAnnounce, decode, encode
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import PHASE_MASKED, PHASE_SHARED, Roster, ShareBatch, SurvivorList

log = logging.getLogger(__name__)

#: Kinds of bytes a device receives: protocol messages, and the model downlink (not followed here).
IN_KINDS = ("announce", "roster", "neighbours", "notice", "inbox", "other")
#: Kinds of bytes a device sends; ``masked`` carries the model update, the rest is protocol.
OUT_KINDS = ("keys", "shares", "masked", "unmask")


def device_key(index: int, salt: bytes = b"fedmq-light") -> nacl.signing.SigningKey:
    """A reproducible enrolment key for device ``index`` (benchmarks enrol thousands without a key file)."""
    return nacl.signing.SigningKey(hashlib.sha256(salt + index.to_bytes(8, "big")).digest())


def device_name(index: int) -> str:
    return f"d{index:05d}"


def rotation_joins(index: int, connected: int, cohort: int) -> Callable[[int], bool]:
    """Round ``r`` is joined by devices ``r*cohort .. r*cohort+cohort-1`` (mod ``connected``)."""

    def joins(round_id: int) -> bool:
        return (index - round_id * cohort) % connected < cohort

    return joins


@dataclass
class LightStats:
    bytes_in: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IN_KINDS, 0))
    bytes_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUT_KINDS, 0))
    rounds_joined: int = 0
    rounds_masked: int = 0
    rounds_revealed: int = 0
    faults: int = 0


@dataclass
class _Round:
    announce: RoundAnnounce
    roster: Roster | CompactRoster | None = None
    join: RosterJoin = field(default_factory=RosterJoin)
    early: list[ShareBatch] = field(default_factory=list)
    masked_sent: bool = False
    revealed: bool = False
    left_out: bool = False


class LightDevice:
    """One device of the secure protocol with a synthetic delta: ``async with LightDevice(...) as d``."""

    def __init__(
        self,
        *,
        federation: str,
        identity: nacl.signing.SigningKey,
        aggregator_key: bytes,
        directory: dict[str, bytes],
        mqtt: MqttConfig,
        dim: int,
        joins: Callable[[int], bool] = lambda round_id: True,
        seed: int = 0,
        chunk_limit: int = DEFAULT_CHUNK_LIMIT,
        delta_scale: float = 0.01,
        keep_encoded: bool = False,
    ) -> None:
        self.client_id = mqtt.client_id
        self.topics = Topics(federation)
        self.federation = federation
        self.dim = dim
        self.joins = joins
        self.chunk_limit = chunk_limit
        self.delta_scale = delta_scale
        self.stats = LightStats()
        #: With ``keep_encoded``, each round's encoded (unmasked) vector by round id: tests check the
        #: aggregator's unmasked sum against them bit for bit.
        self.keep_encoded = keep_encoded
        self.encoded: dict[int, np.ndarray] = {}
        self._verify_key = nacl.signing.VerifyKey(aggregator_key)
        self._secagg = SecAggClient(federation, self.client_id, identity, aggregator_key, directory)
        self._rng = np.random.default_rng(seed)
        self._reassembler = Reassembler(max_total=64 * 1024 * 1024)
        self._round: _Round | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        # Like the edge client: the roster and notices only while in a round (shared/following.py).
        self.conn = MqttConnection(mqtt, [self.topics.round, f"{self.topics.inbox(self.client_id)}/#"])
        self._following = RoundFollowing(self.conn, self.topics)

    async def __aenter__(self) -> LightDevice:
        await self.conn.__aenter__()
        self._reader = asyncio.create_task(self._read(), name=f"light-{self.client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in [self._reader, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.conn.close()

    async def _read(self) -> None:
        async for msg in self.conn.messages():
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
            self.handle(str(msg.topic), payload)

    # -- incoming --------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one message; bad input is counted and logged, never raised."""
        if not payload:
            return
        try:
            if topic == self.topics.round:
                self.stats.bytes_in["announce"] += len(payload)
                self._on_round(decode(payload, RoundAnnounce))
            elif topic == self.topics.roster:
                self.stats.bytes_in["roster"] += len(payload)
                self._spawn(self._on_roster(decode(payload, (Roster, CompactRoster))))
            elif topic == self.topics.notice:
                self.stats.bytes_in["notice"] += len(payload)
                self._spawn(self._on_notice(decode(payload, SurvivorList)))
            elif topic.startswith(self.topics.inbox(self.client_id)):
                index = self.topics.parse_inbox(self.client_id, topic)
                batch = self._reassembler.feed("inbox", index, payload, 64 * 1024 * 1024)
                keys = isinstance(batch, NeighbourKeys) and index is None
                self.stats.bytes_in["neighbours" if keys else "inbox"] += len(payload)
                if batch is not None:
                    if not isinstance(batch, ShareBatch | NeighbourKeys) or batch.device != self.client_id:
                        raise ProtocolError("inbox message is not share bundles or keys for this device")
                    if isinstance(batch, ShareBatch):
                        self._spawn(self._on_inbox(batch))
                    else:
                        self._spawn(self._on_roster(batch))
            else:
                self.stats.bytes_in["other"] += len(payload)
        except FedmqError as exc:
            self.stats.faults += 1
            log.warning("device=%s dropped a message on %s: %s", self.client_id, topic, exc)

    def _on_round(self, announce: RoundAnnounce) -> None:
        verify(announce, self._verify_key)
        current = self._round
        if announce.phase != PHASE_KEYS:
            return
        if current is not None and announce.round_id <= current.announce.round_id:
            return
        if time.time() >= announce.deadline or not self.joins(announce.round_id):
            self._spawn(self._following.leave())
            return
        self._round = _Round(announce)
        self.stats.rounds_joined += 1
        self._spawn(self._start(announce.round_id))

    async def _start(self, round_id: int) -> None:
        await self._following.join()
        await self._send("keys", round_id, self._secagg.advertise(round_id))

    async def _on_roster(self, roster: Roster | CompactRoster | NeighbourKeys) -> None:
        async with self._lock:
            state = self._round
            if state is None or roster.round != state.announce.round_id or state.roster is not None:
                return
            if not isinstance(roster, NeighbourKeys) and self.client_id not in roster.member_ids:
                state.left_out = True
                return
            if isinstance(roster, Roster):
                listed: Roster | CompactRoster = roster
                bundles = self._secagg.on_roster(roster)
            else:  # compact: waits for the other half (roster or this device's neighbour keys)
                joined = state.join.add(roster, state.announce.round_id)
                if joined is None:
                    return
                listed, bundles = joined[0], self._secagg.on_compact_roster(*joined)
            state.roster = listed
            batch = ShareBatch.outgoing(listed.federation, listed.round, self.client_id, bundles)
            await self._send("shares", listed.round, batch)
            for early in state.early:
                self._open(early)
            state.early.clear()

    async def _on_inbox(self, batch: ShareBatch) -> None:
        async with self._lock:
            state = self._round
            if state is None or batch.round != state.announce.round_id:
                return
            if state.roster is None:
                state.early.append(batch)
            else:
                self._open(batch)

    def _open(self, batch: ShareBatch) -> None:
        for bundle in batch.received_bundles():
            self._secagg.on_shares(bundle)

    async def _on_notice(self, notice: SurvivorList) -> None:
        async with self._lock:
            state = self._round
            if state is None or notice.round != state.announce.round_id or state.left_out:
                return
            if notice.phase == PHASE_SHARED and not state.masked_sent and state.roster is not None:
                await self._send_masked(state, notice)
            elif notice.phase == PHASE_MASKED and state.masked_sent and not state.revealed:
                if self.client_id not in notice.devices:
                    return
                await self._send("unmask", notice.round, self._secagg.on_survivors(notice))
                state.revealed = True
                self.stats.rounds_revealed += 1

    async def _send_masked(self, state: _Round, shared: SurvivorList) -> None:
        assert state.roster is not None
        plan = state.announce.plan
        if not plan.secure or plan.codec is None:
            raise ProtocolError(f"round {state.announce.round_id} is not a secure round with a codec")
        config = plan.codec_for(len(state.roster.member_ids))
        encoder = UpdateEncoder(config, self.dim)
        if encoder.encoded_length != state.roster.length:
            raise ProtocolError(f"roster expects {state.roster.length} coordinates, the codec gives "
                                f"{encoder.encoded_length}")  # fmt: skip
        delta = (self._rng.standard_normal(self.dim, dtype=np.float32) * np.float32(self.delta_scale))
        rng = np.random.default_rng(self._rng.integers(1 << 63))

        def work() -> bytes:
            vector = encoder.encode(delta, 0.5, rng)
            if self.keep_encoded:
                self.encoded[shared.round] = vector.copy()
            masked = self._secagg.mask(vector, shared, 1, True)
            return pack(masked, config.bits)

        payload = await asyncio.to_thread(work)
        await self._send("masked", shared.round, self._secagg.masked_input(payload))
        state.masked_sent = True
        self.stats.rounds_masked += 1

    # -- outgoing --------------------------------------------------------------------------------

    async def _send(self, kind: str, round_id: int, message: Message) -> None:
        data = encode(message)
        self.stats.bytes_out[kind] += len(data)
        await publish_framed(
            self.conn,
            self.topics.round_msg(round_id, kind, self.client_id),
            lambda i: self.topics.round_chunk(round_id, kind, self.client_id, i),
            data,
            self.chunk_limit,
            expiry_s=120.0,
        )

    def _spawn(self, coro: object) -> None:
        def count(exc: BaseException) -> None:
            self.stats.faults += 1

        task = asyncio.create_task(guarded(coro, where=f"light device={self.client_id}", on_error=count))  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = ["LightDevice", "LightStats", "device_key", "device_name", "rotation_joins"]
