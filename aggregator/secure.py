"""One secure-aggregation round over MQTT (SecAgg+), phase by phase, each with its own window.

::

    keys     devices advertise fresh keys (signed)        -> roster (signed, retained)
    shares   devices send sealed share bundles              -> U2 notice + each device's inbox
    masked   devices send packed masked vectors (streamed into a running modular sum)
                                                            -> U3 notice
    unmask   devices reveal shares                          -> exact integer sum -> decoder

Membership is fixed when the share phase closes: a device whose bundles did not all arrive is simply out
(nobody masks with it), so an early dropout never kills the round. Every phase ends at its target or its
deadline; a phase that ends below what the protocol needs abandons the round with a logged reason and no
model change. The protocol itself lives in :mod:`shared.secagg`; this module moves its messages.

Crash recovery: a secure round is not resumed after an aggregator restart (its in-memory protocol state,
including the partial modular sum, is gone); the restarted aggregator abandons it and opens the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.signing
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.hunt import BEYOND_CLIP, Hunt, admission, settle
from aggregator.rosters import publish_compact_roster
from shared.chunking import Reassembler
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, unpack
from shared.dp import central_noise_std, device_noise_plan, gaussian_noise
from shared.errors import CodecError, ConfigError, FedmqError, ProtocolError, SecAggError, WireError
from shared.influence import aggregate_bound, check_aggregate
from shared.offences import Offences
from shared.outbox import Outbox
from shared.plan import PhaseWindows, RoundPlan
from shared.secagg import RoundAbandoned, SecAggServer
from shared.secagg import keys as secagg_keys
from shared.secagg.attribution import QUARANTINE_RULES, WEAK_KEY
from shared.topics import KEYS, MASKED, SHARES, UNMASK, RoundTopic, wrong_phase
from shared.wire import Message
from shared.wire.secagg import AdvertiseKeys, MaskedInput, ShareBatch, UnmaskReveal
from shared.wire.seeds import SeedReveal

if TYPE_CHECKING:
    from aggregator.summing import SummingPool

__all__ = ["PhaseWindows", "SecureOutcome", "SecureRound"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureOutcome:
    mean_delta: np.ndarray
    total_weight: float
    contributors: int
    dropped: int
    #: Noise multiplier the released sum really carried (survivors counted); None without DP.
    noise_multiplier: float | None = None


class SecureRound:
    """Drives one round; :meth:`ingest` is fed the round's device messages by the engine."""

    KINDS = frozenset({KEYS, SHARES, MASKED, UNMASK})

    def __init__(
        self,
        config: AggregatorConfig,
        round_id: int,
        identity: nacl.signing.SigningKey,
        plan: RoundPlan,
        dim: int,
        *,
        offences: Offences | None = None,
        hunt: Hunt | None = None,
        summing: SummingPool | None = None,
    ) -> None:
        if plan.codec is None or plan.windows is None:
            raise ConfigError("plan", "a secure round needs a codec and phase windows")
        self.federation = config.federation
        self.round_id = round_id
        self.identity = identity
        self.directory: Mapping[str, bytes] = config.directory or {}
        self.plan = plan
        self.codec = plan.codec
        self.dim = dim
        self.windows = plan.windows
        self.min_clients = config.min_clients
        self.target_clients = config.target_clients
        #: Over-selection: more devices may start the round than the buffer of ``target_clients`` needs.
        # At least one: with no device enrolled yet (live enrolment), the keys phase waits its window.
        self.admit = max(1, min(
            len(self.directory),
            max(config.target_clients, math.ceil(config.over_selection * config.target_clients)),
        ))  # fmt: skip
        self.dropout_rate = config.dropout_rate
        self.corrupt_fraction = config.corrupt_fraction
        self.max_bytes = config.max_update_bytes
        self.dp = plan.dp
        self.noise_multiplier = plan.dp.noise_multiplier if plan.dp is not None else None
        self.adverts: dict[str, AdvertiseKeys] = {}
        self.server: SecAggServer | None = None
        self.config: CodecConfig | None = None
        self.encoder: UpdateEncoder | None = None
        self.phase = KEYS
        #: The unmasked integer sum, once the round got that far (tests check it bit-exactly).
        self.total: np.ndarray | None = None
        self._progress = asyncio.Event()
        self._reassembler = Reassembler(max_total=self.max_bytes)
        self.bytes_in: dict[str, int] = {KEYS: 0, SHARES: 0, MASKED: 0, UNMASK: 0}
        #: Named misbehaviour; the engine passes its own, so offences (and quarantine) span rounds.
        self.offences = offences if offences is not None else Offences()
        self._bundles_expected: int | None = None
        self.offences.quarantine.watch(QUARANTINE_RULES | {BEYOND_CLIP})
        self.offences.quarantine.begin_round(round_id, time.time())
        #: Beyond-clip hunt (``aggregator.hunt``): who sits this round out, who asked to join anyway.
        self.hunt = hunt
        self.sat_out, self.admit = admission(hunt, quarantine=self.offences.quarantine, config=config,
                                             directory=self.directory, admit=self.admit)  # fmt: skip
        self.turned_away: set[str] = set()
        #: Summing workers (``aggregator/summing.py``) take the unchunked masked inputs, if configured.
        self.summing = summing

    # -- the phases ------------------------------------------------------------------------------

    async def run(self, outbox: Outbox, stop: asyncio.Event | None = None) -> SecureOutcome:
        """Run the phases, publishing through ``outbox``; raises RoundAbandoned (with the reason) when the
        round cannot complete. A share batch that cannot be delivered costs only its device. However the
        round ends, its retained roster and notice are cleared: devices subscribe to them as they join a
        round (``shared/following.py``) and must not be sent this round's roster then."""
        try:
            return await self._phases(outbox, stop)
        finally:
            await _logged(outbox.clear_round_messages(), "clearing the round's roster and notice")

    async def _phases(self, outbox: Outbox, stop: asyncio.Event | None) -> SecureOutcome:
        w = self.windows
        if self.summing is not None:  # rounds start once the summing workers are connected
            await self.summing.wait_started()
        await self._wait(w.keys, lambda: len(self.adverts) >= self.admit, stop)
        if len(self.adverts) < self.min_clients:
            if self.sat_out and self.hunt is not None:
                self.hunt.short()
            raise RoundAbandoned(
                f"{len(self.adverts)} devices advertised keys < min_clients {self.min_clients}"
            )
        n = len(self.adverts)
        self.config = self.plan.codec_for(n)
        self.encoder = UpdateEncoder(self.config, self.dim)
        length = self.encoder.encoded_length
        bits = self.config.bits
        self.server = SecAggServer(
            self.federation,
            self.round_id,
            self.identity,
            self.directory,
            bits=bits,
            length=length,
            delta=self.dropout_rate,
            gamma=self.corrupt_fraction,
            unpack=lambda m: unpack(m.payload, bits, length),
            offences=self.offences,
        )
        for advert in self.adverts.values():
            self.server.add_advert(advert)
        roster = self.server.make_roster()
        self.phase = SHARES
        log.info(
            "round=%d phase=shares roster of %d devices, k=%d t=%d, %d coordinates at %d bits",
            self.round_id, n, roster.degree, roster.threshold, length, bits,
        )  # fmt: skip
        await publish_compact_roster(outbox, roster, self.server.graph, self.identity)
        server = self.server
        await self._wait(w.shares, lambda: server.received("share") >= self._expected_bundles(), stop)
        u2 = server.close_share_phase()  # raises RoundAbandoned below threshold
        self.phase = MASKED
        if self.summing is not None:  # every worker knows the round before any device can mask
            await self.summing.open_round(self, u2.devices)
        # All inboxes in flight at once: one at a time, each waiting for its acknowledgement, cost the
        # phase a broker round trip per device (benchmarks/scale.py).
        await asyncio.gather(*(
            _logged(outbox.inbox(device, ShareBatch.inbox(self.federation, self.round_id, device,
                                                          server.shares_for(device))),
                    f"delivering shares to {device}")
            for device in u2.devices
        ))  # fmt: skip
        await _logged(outbox.notice(u2), "publishing the shared-set notice")
        log.info("round=%d phase=masked U2 has %d of %d devices", self.round_id, len(u2.devices), n)
        # Buffered close: the first ``target_clients`` masked inputs (or all of U2, or the deadline) -- but
        # never leave out more of U2 than a neighbourhood can lose (k - t), or the round could not unmask.
        assert server.params is not None
        tolerance = server.params.tolerated_dropouts
        wanted = max(min(self.target_clients, len(u2.devices)), len(u2.devices) - tolerance)
        # ...and only close early once the inputs so far can be unmasked (the graph's need, not a count).
        await self._wait(
            w.masked, lambda: server.received("mask") >= wanted and server.unmask_obstacle() is None, stop
        )
        if self.summing is not None:  # their partial sums, for exactly the inputs they were granted
            await self.summing.collect()
        u3 = server.close_masked_phase()
        self.phase = UNMASK
        await _logged(outbox.notice(u3), "publishing the survivor notice")
        log.info("round=%d phase=unmask U3 has %d devices", self.round_id, len(u3.devices))
        await self._wait(w.unmask, lambda: server.received("unmask") >= len(u3.devices), stop)
        # A dealer nobody can rebuild is excluded and its neighbours asked for their pair seeds with it
        # (shared/secagg/exclusion.py); raises RoundAbandoned when neither is possible.
        request = await asyncio.to_thread(server.seed_request)
        if request is not None:
            await _logged(outbox.notice(request), "publishing the pair-seed request")
            seeds_in = lambda: not server.exclusion.waiting_for(server.graph, server.masked)  # noqa: E731
            await self._wait(w.unmask, seeds_in, stop)
        contributors = len(server.masked)  # U3 less any dealer excluded after the reveals
        started = time.perf_counter()
        total = await asyncio.to_thread(server.unmask)
        self.total = total
        decoder = UpdateDecoder(self.config, self.dim)
        try:
            mean, weight = decoder.decode(total, contributors)
            self._check_influence(decoder, mean, weight, contributors, n)
        except CodecError as exc:  # beyond the clip, or a summed weight above one per contributor
            self._settle(sorted(server.masked), str(exc))
            raise RoundAbandoned(f"round {self.round_id}: aggregate refused: {exc}") from exc
        self._settle(sorted(server.masked), None)
        log.info(
            "round=%d unmasked the sum of %d inputs in %.3fs (summed weight %.3f)",
            self.round_id, contributors, time.perf_counter() - started, weight,
        )  # fmt: skip
        present = None
        if self.dp is not None:
            mean, present = self._privatize(mean, weight, n, contributors)
        return SecureOutcome(mean, weight, contributors, n - contributors, present)

    def _check_influence(
        self, decoder: UpdateDecoder, mean: np.ndarray, weight: float, survivors: int, roster: int
    ) -> None:
        """Refuse an aggregate no set of clipped inputs could produce (``shared.influence``)."""
        assert self.config is not None
        noise_variance = 0.0
        if self.dp is not None and self.dp.mode == "distributed" and self.noise_multiplier is not None:
            encoder = UpdateEncoder(self.config, self.dim)
            plan = device_noise_plan(self.dp, self.noise_multiplier, self.config, encoder, roster)
            noise_variance = plan.variance_present(survivors)
        bound = aggregate_bound(
            clip_norm=self.config.clip_norm,
            total_weight=weight,
            contributors=survivors,
            scale=decoder.scale,
            data_length=decoder.data_length,
            subsample_rate=self.config.subsample_rate,
            noise_variance=noise_variance,
        )
        norm = check_aggregate(mean, bound, survivors)  # AggregateOutOfBounds: refused
        log.info("round=%d aggregate norm %.4g within its bound %.4g", self.round_id, norm, bound)

    def _settle(self, contributors: Sequence[str], refused: str | None) -> None:
        if self.hunt is not None:
            present = set(self.adverts) | self.turned_away
            settle(self.hunt, self.offences, round_id=self.round_id, contributors=contributors,
                   present=present, refused=refused)  # fmt: skip

    def _privatize(
        self, mean: np.ndarray, weight: float, roster: int, survivors: int
    ) -> tuple[np.ndarray, float]:
        """Distributed mode: the noise is already in the sum; measure it. Central mode: add it now."""
        assert self.dp is not None and self.config is not None and self.noise_multiplier is not None
        encoder = self.encoder
        assert encoder is not None
        if self.dp.mode == "distributed":
            plan = device_noise_plan(self.dp, self.noise_multiplier, self.config, encoder, roster)
            present = plan.noise_multiplier_present(survivors)
            if not plan.meets_target(survivors):
                log.warning(
                    "round=%d only %d of %d devices survived: noise multiplier %.3f is below the target %.3f",
                    self.round_id, survivors, roster, present, self.noise_multiplier,
                )  # fmt: skip
            return mean, present
        # Central mode (trusted aggregator): Gaussian noise on the decoded sum, then re-normalise.
        std = central_noise_std(
            self.noise_multiplier, self.config.clip_norm, scale=encoder.scale, dim=encoder.data_length
        )
        noisy = mean.astype(np.float64) + gaussian_noise(mean.size, std) / max(weight, 1e-12)
        return noisy.astype(np.float32), self.noise_multiplier

    def _expected_bundles(self) -> int:
        assert self.server is not None
        if self._bundles_expected is None:  # the graph is fixed once the roster is made
            self._bundles_expected = sum(len(neighbours) for neighbours in self.server.graph.values())
        return self._bundles_expected

    def wake(self) -> None:
        """Re-check the open phase's close condition (an input was counted elsewhere)."""
        self._progress.set()

    async def _wait(self, window: float, done: Callable[[], bool], stop: asyncio.Event | None) -> None:
        deadline = time.monotonic() + window
        while not done() and not (stop and stop.is_set()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(remaining, 0.5))

    # -- intake ----------------------------------------------------------------------------------

    def ingest(self, parsed: RoundTopic, payload: bytes) -> None:
        """Feed one device frame; raises FedmqError (logged and dropped by the engine) on bad input."""
        if parsed.kind != self.phase:
            if parsed.kind == KEYS and parsed.sender in self.sat_out:
                return  # a suspect the hunt left out, late: it sits out all the same
            raise wrong_phase(parsed.kind, self.phase)
        key = f"{parsed.round_id}/{parsed.kind}/{parsed.sender}"
        msg = self._reassembler.feed(key, parsed.chunk, payload, self.max_bytes)
        self.bytes_in[parsed.kind] += len(payload)
        if msg is None:
            return
        device = getattr(msg, "device", None)
        if device != parsed.sender:
            raise ProtocolError(
                f"message device {device!r} does not match its topic sender {parsed.sender!r}"
            )
        if parsed.kind == KEYS:
            self._on_advert(msg)
        elif parsed.kind == SHARES:
            self._on_shares(msg)
        elif parsed.kind == MASKED:
            self._on_masked(msg)
        else:
            self._on_reveal(msg)
        self._progress.set()

    def _on_advert(self, msg: Message) -> None:
        if not isinstance(msg, AdvertiseKeys):
            raise WireError(f"expected keys, got {msg.TYPE}")
        if msg.federation != self.federation or msg.round != self.round_id:
            raise ProtocolError(f"keys for {msg.federation}/{msg.round} (replayed or misrouted)")
        if msg.device not in self.directory:
            raise ProtocolError(f"unknown sender {msg.device!r}")
        if msg.device in self.adverts:
            return
        if self.offences.quarantine.blocks(msg.device):
            raise ProtocolError(f"{msg.device!r} is quarantined: it broke a rule, with evidence")
        if msg.device in self.sat_out:  # a suspect the hunt leaves out: it sits out, as if over-selected
            self.turned_away.add(msg.device)
            return
        if len(self.adverts) >= self.admit:
            raise ProtocolError(f"round already has {self.admit} devices (over-selection limit)")
        secagg_keys.verify(self.directory[msg.device], msg.signed_bytes(), msg.signature, "keys")
        try:  # checked here, at intake, so one weak key never reaches (and stops) the roster
            secagg_keys.check_public_key(msg.enc_pk, "encryption key")
            secagg_keys.check_public_key(msg.mask_pk, "mask key")
        except SecAggError as exc:
            self.offences.record(msg.device, WEAK_KEY, str(exc), context=f"round={self.round_id}")
            raise
        self.adverts[msg.device] = msg

    def _on_shares(self, msg: Message) -> None:
        if not isinstance(msg, ShareBatch):
            raise WireError(f"expected a share batch, got {msg.TYPE}")
        assert self.server is not None
        for bundle in msg.sent_bundles():  # the batch's device is the sender of every bundle
            self.server.add_shares(bundle)
        if msg.signature:  # its signed digests: what an inconsistency proof against it rests on
            self.server.add_digest_signature(msg.device, msg.digests, msg.signature)

    def _on_masked(self, msg: Message) -> None:
        if not isinstance(msg, MaskedInput):
            raise WireError(f"expected a masked input, got {msg.TYPE}")
        assert self.server is not None
        self.server.add_masked(msg)

    def _on_reveal(self, msg: Message) -> None:
        assert self.server is not None
        if isinstance(msg, SeedReveal):  # the pair-seed step (shared/secagg/exclusion.py)
            self.server.add_seed_reveal(msg)
            return
        if not isinstance(msg, UnmaskReveal):
            raise WireError(f"expected a reveal, got {msg.TYPE}")
        self.server.add_reveal(msg)


async def _logged(publishing: Awaitable[None], what: str) -> None:
    """Publish; a failure is logged, not raised (devices that miss it drop out, the round goes on)."""
    try:
        await publishing
    except FedmqError as exc:
        log.error("%s failed: %s", what, exc)
