"""A device's side of one secure round: keys -> shares -> masked input -> reveal, over MQTT.

The protocol decisions (signature checks, the refusal rules) are :class:`shared.secagg.SecAggClient`'s;
this class only sequences them against the round's messages and the local training task, encodes the
delta with the round's codec, and publishes. Example counts and metrics never travel in clear: the
device's weight rides inside the masked vector as extra coordinates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from edge_client.trainer import TrainResult
from shared.codec import UpdateEncoder, pack
from shared.dp import device_noise_plan, secure_generator, skellam_noise
from shared.errors import ProtocolError
from shared.outbox import Outbox
from shared.secagg import SecAggClient
from shared.secagg.roster import RosterJoin
from shared.timing import AggregatorTime, RoundTimes
from shared.wire import Message, RoundAnnounce
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import PHASE_MASKED, PHASE_SHARED, Roster, ShareBatch, SurvivorList
from shared.wire.seeds import SeedRequest

log = logging.getLogger(__name__)

#: What the roster topic carries: the compact roster (or the full one); and a device's inbox: share
#: bundles, or the neighbour keys that complete a compact roster.
Listed = Roster | CompactRoster
ROSTER_TYPES = (Roster, CompactRoster)
INBOX_TYPES = (ShareBatch, NeighbourKeys)

NOISE_CHUNK = 1 << 16


def encode_update(
    encoder: UpdateEncoder,
    delta: np.ndarray,
    weight: float,
    rng: np.random.Generator,
    noise_variance: float = 0.0,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The device's vector in Z_2^b: codec output plus, in distributed DP mode, Skellam noise.

    The noise is added in the integer domain after rounding and before masking (Agarwal et al. 2021), to
    the data coordinates only, chunk by chunk so no extra full-size temporary is needed.
    """
    vector = encoder.encode(delta, weight, rng)
    if noise_variance > 0:
        modulus_mask = np.uint32((1 << encoder.config.bits) - 1) if encoder.config.bits < 32 else None
        for start in range(0, encoder.data_length, NOISE_CHUNK):
            part = vector[start : min(start + NOISE_CHUNK, encoder.data_length)]
            noise = skellam_noise(part.size, noise_variance, rng=noise_rng)
            part += noise.astype(np.uint32)  # two's complement: adding mod 2^32, then reduce mod 2^b
            if modulus_mask is not None:
                part &= modulus_mask
    return vector


class SecureParticipation:
    """State of this device in one secure round."""

    def __init__(
        self,
        secagg: SecAggClient,
        announce: RoundAnnounce,
        training: asyncio.Task[TrainResult],
        dim: int,
        *,
        outbox: Outbox,
        on_phase: Callable[[str], None] | None = None,
        staleness: int = 0,
        keep_encoded: bool = False,
        times: RoundTimes | None = None,
    ) -> None:
        plan = announce.plan
        if not plan.secure or plan.codec is None or plan.windows is None:
            raise ProtocolError(f"round {announce.round_id} is not a secure round")
        self.secagg = secagg
        self.announce = announce
        self.plan = plan
        self.round_id = announce.round_id
        self.training = training
        self.dim = dim
        self.outbox = outbox
        self.on_phase = on_phase or (lambda phase: None)
        self.staleness = staleness
        self.policy = plan.staleness
        self.codec = plan.codec
        self.weight_cap = plan.weight_cap
        self.dp = plan.dp
        #: The round's stamps on this device's monotonic clock (never its wall clock: it may be off).
        self.times = times if times is not None else AggregatorTime().round(announce)
        #: The latest moment the masked phase can still be open (phases close at their deadline or earlier).
        self.masked_deadline = announce.opened_at + plan.windows.until_masked_closes
        self.roster: Roster | CompactRoster | None = None
        self._join = RosterJoin()  # a compact roster waits here for this device's neighbour keys
        self.masked_sent = False
        self.left_out = False
        #: With ``keep_encoded``, a copy of the encoded (unmasked) vector this device contributed, for tests
        #: and audits; never sent. Off by default: it would double the device's memory.
        self.keep_encoded = keep_encoded
        self.encoded: np.ndarray | None = None
        self.revealed = False
        #: This device answered the round's seed request. It answers once: a repeated request (a reconnect,
        #: the aggregator re-publishing) is the delivery ledger's cue to re-send that same answer.
        self.seeds_answered = False
        self._lock = asyncio.Lock()
        self._masked_closed = asyncio.Event()
        #: Set once this round's share batch (this device's inbox) came: it must come before masking.
        self._inbox_seen = asyncio.Event()
        self._early_bundles: list[ShareBatch] = []
        self._opened: set[frozenset[tuple[str, bytes]]] = set()

    async def send(self, kind: str, message: Message) -> None:
        """Publish this device's message of ``kind``; it expires with the round."""
        remaining = max(1.0, self.times.until(self.announce.deadline))
        await self.outbox.round_message(
            self.round_id, kind, self.secagg.device_id, message, expiry_s=remaining
        )

    async def start(self) -> None:
        await self.send("keys", self.secagg.advertise(self.round_id))
        self.on_phase("keys")

    async def on_roster(self, roster: Roster | CompactRoster | NeighbourKeys) -> None:
        """The full roster, or a compact one and this device's neighbour keys (from its inbox), which
        may come in either order: the first waits for the other (``shared.secagg.roster.RosterJoin``)."""
        async with self._lock:
            if roster.round != self.round_id or self.roster is not None or self.left_out:
                return
            if not isinstance(roster, NeighbourKeys) and self.secagg.device_id not in roster.member_ids:
                # Over-selection: the round started without this device; its delta stays for later.
                self.left_out = True
                log.info(
                    "device=%s not in round %d's roster; sits it out", self.secagg.device_id, self.round_id
                )
                return
            if isinstance(roster, Roster):
                listed: Roster | CompactRoster = roster
                bundles = self.secagg.on_roster(roster)
            else:
                joined = self._join.add(roster, self.round_id)
                if joined is None:
                    return
                listed, bundles = joined[0], self.secagg.on_compact_roster(*joined)
            self.roster = listed
            batch = ShareBatch.outgoing(listed.federation, listed.round, self.secagg.device_id, bundles)
            # Its digests signed: an inconsistency proof against this device could then be checked.
            signature = self.secagg.sign_digests(listed.round, batch.digests)
            await self.send("shares", replace(batch, signature=signature))
            self.on_phase("shares")
            for batch in self._early_bundles:
                self._open(batch)
            self._early_bundles.clear()

    async def on_inbox(self, batch: ShareBatch | NeighbourKeys) -> None:
        if isinstance(batch, NeighbourKeys):  # the compact roster's other half
            return await self.on_roster(batch)
        async with self._lock:
            if batch.round != self.round_id:
                raise ProtocolError(f"share batch for round {batch.round}, this device is in {self.round_id}")
            self._inbox_seen.set()
            if self.roster is None:
                self._early_bundles.append(batch)
            else:
                self._open(batch)

    def _open(self, batch: ShareBatch) -> None:
        """Open every bundle independently; a bad one costs this device only that sender's shares."""
        opened = frozenset(batch.ciphertexts.items())
        if opened in self._opened:
            return  # the aggregator re-published the inbox after a reconnect: already have these
        for sender, reason in self.secagg.open_all(batch.received_bundles()).items():
            log.warning("round=%s share bundle from %s refused: %s", batch.round, sender, reason)
        self._opened.add(opened)

    def close_masked_phase(self) -> None:
        """The round moved past the masked phase (a U3 notice or a newer round): never send late."""
        self._masked_closed.set()

    async def on_notice(self, notice: SurvivorList | SeedRequest) -> None:
        if isinstance(notice, SeedRequest):  # pair seeds with a dealer nobody could rebuild
            async with self._lock:
                if notice.round != self.round_id or not self.revealed or self.left_out or self.seeds_answered:
                    return
                # On the unmask topic; the outbox's ledger keeps it as its own kind (delivery.SEEDS).
                await self.send("unmask", self.secagg.on_seed_request(notice))
                self.seeds_answered = True
            return
        if notice.round == self.round_id and notice.phase == PHASE_MASKED:
            self._masked_closed.set()  # outside the lock: a pending masked send must see it
        in_u2 = notice.phase == PHASE_SHARED and self.secagg.device_id in notice.devices  # has a batch
        if notice.round == self.round_id and in_u2 and not self.left_out:
            await self._inbox_first()  # outside the lock: on_inbox takes it
        async with self._lock:
            if notice.round != self.round_id or self.left_out:
                return
            if notice.phase == PHASE_SHARED and not self.masked_sent:
                await self._send_masked(notice)
            elif notice.phase == PHASE_MASKED and not self.revealed and self.masked_sent:
                reveal = self.secagg.on_survivors(notice)
                await self.send("unmask", reveal)
                self.revealed = True
                self.on_phase("unmask")

    async def _inbox_first(self) -> None:
        """Wait, at most until the masked phase ends, for this device's share batch before masking.

        The aggregator publishes every inbox before the shared-set notice, so this normally returns at
        once. But after a broker restart that lost this device's session, the retained notice reaches the
        device as soon as it subscribes again, and its batch only when the aggregator re-publishes it (on
        seeing the device online). Masking first would close the share phase: the batch would then be
        refused, this device could reveal none of its neighbours' shares at unmask, and an honest dealer
        would be blamed for bundles nobody could open (``secagg-bundles-refused``).
        """
        if self._inbox_seen.is_set():
            return
        waits = [asyncio.ensure_future(event.wait()) for event in (self._inbox_seen, self._masked_closed)]
        try:
            await asyncio.wait(waits, timeout=max(0.0, self.times.until(self.masked_deadline)),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _send_masked(self, shared: SurvivorList) -> None:
        if self.roster is None:
            raise ProtocolError("shared-set notice before the roster")
        closed = asyncio.ensure_future(self._masked_closed.wait())
        try:
            racing: list[asyncio.Future[Any]] = [asyncio.shield(self.training), closed]
            await asyncio.wait(
                racing,
                timeout=max(0.0, self.times.until(self.masked_deadline)),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            closed.cancel()
        if not self.training.done() or self._masked_closed.is_set():
            # Too slow for this round: keep the delta (it is not consumed) for a later round, stale.
            log.info(
                "device=%s round=%d: training not done before the masked phase closed; delta kept",
                self.secagg.device_id,
                self.round_id,
            )
            return
        if self.training.cancelled() or self.training.exception() is not None:
            # The client logged the failure when it happened; without a delta this device drops out.
            log.info("device=%s round=%d: no delta (training failed); drops out of the round",
                     self.secagg.device_id, self.round_id)  # fmt: skip
            return
        result = self.training.result()
        config = self.plan.codec_for(len(self.roster.member_ids))
        encoder = UpdateEncoder(config, self.dim)
        if encoder.encoded_length != self.roster.length or config.bits != self.roster.bits:
            raise ProtocolError(
                f"roster expects {self.roster.length} coordinates at {self.roster.bits} bits, "
                f"the codec gives {encoder.encoded_length} at {config.bits}"
            )
        # FedAvg weight (floored and capped: shared.influence) times the staleness weight: both scale the
        # delta before encoding.
        norm = float(np.linalg.norm(result.delta.astype(np.float64)))
        weight = self.plan.example_weight(result.num_examples) * self.policy.weight(self.staleness, norm)
        noise_variance = 0.0
        if self.dp is not None and self.dp.mode == "distributed":
            plan = device_noise_plan(
                self.dp, self.dp.resolved_noise_multiplier(), config, encoder, len(self.roster.member_ids)
            )
            noise_variance = plan.per_device_variance
        encoded = await asyncio.to_thread(
            encode_update,
            encoder,
            result.delta,
            weight,
            np.random.default_rng(),
            noise_variance,
            secure_generator(),
        )
        if self.keep_encoded:
            self.encoded = encoded.copy()
        masked = await asyncio.to_thread(self.secagg.mask, encoded, shared, 1, True)  # in place
        message = self.secagg.masked_input(pack(masked, config.bits))
        await self.send("masked", message)
        self.masked_sent = True
        self.on_phase("masked")


__all__ = ["SecureParticipation"]
