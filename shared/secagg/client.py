"""Device side of SecAgg+: one state machine per device, one round at a time, no I/O.

Rounds follow Bonawitz et al. CCS 2017 Fig. 4 (with signatures, §6.2 "active adversary") restricted to
the SecAgg+ neighbour graph of Bell et al. CCS 2020 §4:

0. :meth:`SecAggClient.advertise` - fresh keys, signed advert.
1. :meth:`SecAggClient.on_roster` - check the aggregator's signature *and every member's own advert
   signature* (a swapped key is refused), recompute the graph seed, Shamir-share ``b_u`` and the mask
   key among the neighbours, seal one bundle per neighbour. :meth:`on_compact_roster` does the same from
   the compact roster and the neighbours' adverts only (``shared.secagg.roster``). :meth:`on_shares`
   opens incoming bundles.
2. :meth:`SecAggClient.mask` - given the signed U2 notice, ``y = x + PRG(b_u) + sum_{v>u} PRG(s_uv)
   - sum_{v<u} PRG(s_uv) mod 2^b`` over neighbours in U2; :meth:`masked_input` signs the packed vector.
3. :meth:`SecAggClient.on_survivors` - given the signed U3 notice, reveal ``b``-shares of surviving
   neighbours and mask-key shares of dropped ones, never both kinds for one neighbour.

Every refusal raises :class:`~shared.errors.SecAggError` and is logged with round and device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import nacl.signing
import numpy as np

from shared.errors import CodecError, SecAggError
from shared.secagg import bundles, keys, prg, proofs, seeds, shamir
from shared.secagg.roster import RosterCheck
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import (
    PHASE_MASKED,
    PHASE_SHARED,
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Roster,
    SurvivorList,
    UnmaskReveal,
)
from shared.wire.seeds import SeedRequest, SeedReveal

log = logging.getLogger(__name__)

_SELF_MASK = "self_mask"
_MASK_KEY = "mask_key"


@dataclass
class _Round:
    """Everything a device holds for one round; dropped when the next round starts."""

    round_id: int
    keys: keys.RoundKeys
    advert: AdvertiseKeys
    roster: Roster | CompactRoster | None = None
    neighbours: tuple[str, ...] = ()
    peers: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (enc pk, mask pk)
    outgoing: list[EncryptedShares] = field(default_factory=list)
    received: dict[str, bundles.ShareBundle] = field(default_factory=dict)
    shared: frozenset[str] | None = None
    masked: np.ndarray | None = None
    masked_message: MaskedInput | None = None
    revealed: dict[str, str] = field(default_factory=dict)  # neighbour -> kind revealed
    survivors: frozenset[str] | None = None
    reveal: UnmaskReveal | None = None
    refused: set[str] = field(default_factory=set)  # senders whose bundles were refused (reported)
    seed_request: SeedRequest | None = None
    seed_reveal: SeedReveal | None = None


class SecAggClient:
    """One device's secure-aggregation state machine (pure; the MQTT layer feeds it messages).

    ``directory`` maps every enrolled device id to its Ed25519 verify key (32 bytes) and
    ``aggregator_key`` is the aggregator's verify key; both come from enrolment, never from a round.
    """

    def __init__(
        self,
        federation: str,
        device_id: str,
        identity: nacl.signing.SigningKey,
        aggregator_key: bytes,
        directory: Mapping[str, bytes],
        min_threshold: int = 2,
    ) -> None:
        self.federation = federation
        self.device_id = device_id
        self._identity = identity
        self._aggregator_key = bytes(aggregator_key)
        self._directory = directory
        self._min_threshold = min_threshold
        self._last_round = -1
        self._round: _Round | None = None

    # -- helpers -------------------------------------------------------------------------------
    def _refuse(self, round_id: object, reason: str) -> SecAggError:
        log.warning("secagg refusal round=%s device=%s: %s", round_id, self.device_id, reason,
                    extra={"round": round_id, "device": self.device_id, "phase": "secagg"})  # fmt: skip
        return SecAggError(f"device {self.device_id!r} round {round_id}: {reason}")

    def _current(self, federation: str, round_id: int, what: str) -> _Round:
        state = self._round
        if federation != self.federation:
            raise self._refuse(round_id, f"{what} is for federation {federation!r}")
        if state is None or round_id != state.round_id:
            current = None if state is None else state.round_id
            stale = state is not None and round_id < state.round_id
            kind = "replayed from an earlier round" if stale else "not for this round"
            raise self._refuse(round_id, f"{what} is {kind} (current round {current})")
        return state

    def _verify_notice(self, notice: SurvivorList, phase: str) -> _Round:
        state = self._current(notice.federation, notice.round, f"{phase} notice")
        if state.roster is None:
            raise self._refuse(notice.round, f"{phase} notice before the roster")
        if notice.phase != phase:
            raise self._refuse(notice.round, f"expected a {phase!r} notice, got {notice.phase!r}")
        try:
            keys.verify(self._aggregator_key, notice.signed_bytes(), notice.signature, f"{phase} notice")
        except SecAggError as exc:
            raise self._refuse(notice.round, str(exc)) from exc
        members = set(state.roster.member_ids)
        if not set(notice.devices) <= members:
            raise self._refuse(notice.round, f"{phase} notice names devices outside the roster")
        if self.device_id not in notice.devices:
            raise self._refuse(notice.round, f"{phase} notice does not list this device")
        if len(notice.devices) < state.roster.threshold:
            raise self._refuse(
                notice.round,
                f"only {len(notice.devices)} devices in the {phase} set, below the threshold "
                f"{state.roster.threshold}",
            )
        return state

    # -- round 0 -------------------------------------------------------------------------------
    def advertise(self, round_id: int) -> AdvertiseKeys:
        """Start ``round_id`` with fresh keys; rounds only move forward."""
        if round_id <= self._last_round:
            raise self._refuse(round_id, f"round {round_id} is not after round {self._last_round}")
        round_keys = keys.RoundKeys.generate()
        unsigned = AdvertiseKeys(
            self.federation,
            round_id,
            self.device_id,
            round_keys.enc_pk,
            round_keys.mask_pk,
            round_keys.self_mask_commitment,
        )
        advert = replace(unsigned, signature=keys.sign(self._identity, unsigned.signed_bytes()))
        self._last_round = round_id
        self._round = _Round(round_id, round_keys, advert)
        return advert

    # -- round 1 -------------------------------------------------------------------------------
    def on_roster(self, roster: Roster) -> list[EncryptedShares]:
        """Verify the full roster (every member's advert) and return one sealed share bundle per neighbour."""
        return self._listed(roster, None)

    def on_compact_roster(
        self, roster: CompactRoster, neighbour_keys: NeighbourKeys
    ) -> list[EncryptedShares]:
        """Verify a compact roster and this device's neighbour adverts (``shared.secagg.roster``), then
        return one sealed share bundle per neighbour, as :meth:`on_roster` does for the full roster."""
        return self._listed(roster, neighbour_keys)

    def _listed(self, roster: Roster | CompactRoster, slice_: NeighbourKeys | None) -> list[EncryptedShares]:
        """Check the roster (``shared.secagg.roster``), Shamir-share ``b_u`` and the mask key among the
        verified neighbours and seal one bundle each."""
        state = self._current(roster.federation, roster.round, "roster")
        if state.roster is not None:
            if roster == state.roster:  # QoS 1 duplicate
                return list(state.outgoing)
            raise self._refuse(roster.round, "a second, different roster for the same round")
        check = RosterCheck(self.device_id, state.advert, self._aggregator_key, self._directory)
        try:
            neighbours, peers = check(roster, slice_)
        except SecAggError as exc:
            raise self._refuse(roster.round, str(exc)) from exc
        t = roster.threshold
        # Privacy floor (Bonawitz et al. §4, Bell et al. §4): with t <= k/2 an aggregator could collect
        # one kind of share from half the neighbours and the other kind from the rest.
        if 2 * t <= len(neighbours) or t < self._min_threshold or t > len(neighbours):
            raise self._refuse(
                roster.round, f"threshold {t} unsafe for {len(neighbours)} neighbours (need k/2 < t <= k)"
            )
        b_shares = shamir.split(state.keys.self_mask, t, len(neighbours))
        key_shares = shamir.split(state.keys.mask_sk, t, len(neighbours))
        outgoing = []
        for i, neighbour in enumerate(neighbours):
            ciphertext = bundles.seal(
                state.keys.enc_sk,
                peers[neighbour][0],
                self.federation,
                roster.round,
                self.device_id,
                neighbour,
                self_mask_share=b_shares[i],
                mask_key_share=key_shares[i],
            )
            digest = bundles.bundle_digest(
                self.federation, roster.round, self.device_id, neighbour, b_shares[i], key_shares[i]
            )
            outgoing.append(
                EncryptedShares(self.federation, roster.round, self.device_id, neighbour, ciphertext, digest)
            )
        state.roster = roster
        state.neighbours = neighbours
        state.peers = peers
        state.outgoing = outgoing
        return list(outgoing)

    def on_shares(self, message: EncryptedShares) -> None:
        """Open a bundle addressed to this device; duplicates are idempotent."""
        state = self._current(message.federation, message.round, "share bundle")
        if state.roster is None:
            raise self._refuse(message.round, "share bundle before the roster")
        if message.recipient != self.device_id:
            raise self._refuse(message.round, f"share bundle addressed to {message.recipient!r}")
        if message.sender not in state.neighbours:
            raise self._refuse(message.round, f"share bundle from non-neighbour {message.sender!r}")
        if state.shared is not None:
            raise self._refuse(message.round, "share bundle after the share phase closed")
        try:
            bundle = bundles.open_bundle(
                state.keys.enc_sk,
                state.peers[message.sender][0],
                message.ciphertext,
                self.federation,
                message.round,
                message.sender,
                recipient=self.device_id,
            )
        except SecAggError as exc:
            raise self._refuse(message.round, str(exc)) from exc
        if message.digest:  # shares that differ from the dealer's public digests are never revealed
            expected = bundles.bundle_digest(
                self.federation,
                message.round,
                message.sender,
                self.device_id,
                bundle.self_mask_share,
                bundle.mask_key_share,
            )
            if expected != message.digest:
                raise self._refuse(
                    message.round, f"bundle from {message.sender!r} does not match its published digests"
                )
        earlier = state.received.get(message.sender)
        if earlier is not None and earlier != bundle:
            raise self._refuse(message.round, f"{message.sender!r} sent two different share bundles")
        state.received[message.sender] = bundle

    def open_all(self, messages: list[EncryptedShares]) -> dict[str, str]:
        """Open every bundle on its own; return ``{sender: reason}`` for those that were refused.

        One bad bundle (garbage, re-wrapped, for another pair or round) must not keep this device from
        opening the bundles sorted after it: each is tried independently, a refused one simply means
        this device holds no share of that sender (which the threshold tolerates, exactly as if the
        sender had not reached it), and the refusals are returned so the caller can report them.
        """
        refused: dict[str, str] = {}
        for message in messages:
            try:
                self.on_shares(message)
            except SecAggError as exc:
                refused[message.sender] = str(exc)
                if seeds.reportable(self._round, message):  # reported with the masked input
                    self._round.refused.add(message.sender)  # type: ignore[union-attr]
        return refused

    def sign_digests(self, round_id: int, digests: dict[str, bytes]) -> bytes:
        """This dealer's signature over its share digests (ShareBatch.signature; what a proof rests on)."""
        return proofs.sign_digests(self._identity, self.federation, round_id, self.device_id, digests)

    # -- round 2 -------------------------------------------------------------------------------
    def mask(
        self, x: np.ndarray, shared: SurvivorList, workers: int = 1, in_place: bool = False
    ) -> np.ndarray:
        """Masked input ``y_u`` (uint32 in [0, 2^b)) for the signed U2 notice ``shared``.

        ``in_place`` masks a uint32 ``x`` in its own buffer, chunk by chunk, so a device needs no second
        vector of the model's size (the encoder's output becomes the masked vector).
        """
        state = self._verify_notice(shared, PHASE_SHARED)
        assert state.roster is not None
        u2 = frozenset(shared.devices)
        if state.shared is not None and state.shared != u2:
            raise self._refuse(shared.round, "a second, different shared-set notice")
        live = [v for v in state.neighbours if v in u2]
        if len(live) < state.roster.threshold:
            raise self._refuse(
                shared.round,
                f"only {len(live)} neighbours in U2, below the threshold {state.roster.threshold}",
            )
        bits, length = state.roster.bits, state.roster.length
        vector = np.asarray(x)
        if vector.shape != (length,) or vector.dtype.kind not in "ui":
            raise CodecError(
                f"input must be an integer vector of length {length}, got {vector.dtype}{vector.shape}"
            )
        if length and (int(vector.min()) < 0 or int(vector.max()) >= 1 << bits):
            raise CodecError(f"input values must lie in [0, 2^{bits})")
        if state.masked is not None:
            raise self._refuse(shared.round, "this round's input is already masked (one input per round)")
        plus = [state.keys.self_mask]
        minus: list[bytes] = []
        for v in live:
            seed = keys.pair_seed(
                state.keys.mask_sk, state.peers[v][1], self.federation, shared.round, self.device_id, v
            )
            (plus if self.device_id < v else minus).append(seed)
        y = vector if in_place and vector.dtype == np.uint32 else vector.astype(np.uint32)
        modulus = prg.modulus_mask(bits)
        if workers > 1:
            np.add(y, prg.combined_mask_parallel(plus, minus, bits, length, workers=workers), out=y)
        else:
            for start in range(0, length, prg.CHUNK_COORDS):
                stop = min(start + prg.CHUNK_COORDS, length)
                y[start:stop] += prg.combined_mask(plus, minus, bits, start, stop)
        np.bitwise_and(y, modulus, out=y)
        state.shared = u2
        state.masked = y
        return y

    def masked_input(self, payload: bytes) -> MaskedInput:
        """Sign the packed form of the vector :meth:`mask` returned (packing is the codec's job)."""
        state = self._round
        if state is None or state.masked is None or state.roster is None:
            raise self._refuse(None if state is None else state.round_id, "nothing masked this round")
        unsigned = MaskedInput(self.federation, state.round_id, self.device_id, bytes(payload),
                               state.roster.bits, state.roster.length,
                               refused=sorted(state.refused - set(state.received)))  # fmt: skip
        signed = replace(unsigned, signature=keys.sign(self._identity, unsigned.signed_bytes()))
        state.masked_message = signed
        return signed

    # -- round 3 -------------------------------------------------------------------------------
    def on_survivors(self, survivors: SurvivorList) -> UnmaskReveal:
        """Reveal shares for the signed U3 notice; never both kinds for one neighbour."""
        state = self._verify_notice(survivors, PHASE_MASKED)
        assert state.roster is not None
        if state.shared is None or state.masked is None:
            raise self._refuse(survivors.round, "survivor list before this device masked its input")
        u3 = frozenset(survivors.devices)
        if not u3 <= state.shared:
            raise self._refuse(survivors.round, "survivor list names devices that were not in the shared set")
        if state.reveal is not None and state.survivors == u3:
            return state.reveal  # QoS 1 duplicate
        live = [v for v in state.neighbours if v in u3]
        if len(live) < state.roster.threshold:
            t = state.roster.threshold
            raise self._refuse(survivors.round, f"only {len(live)} neighbours survived, threshold {t}")
        wanted: dict[str, str] = {}
        for v in state.neighbours:
            if v == self.device_id or v not in state.shared or v not in state.received:
                continue
            wanted[v] = _SELF_MASK if v in u3 else _MASK_KEY
        clash = sorted(v for v, kind in wanted.items() if state.revealed.get(v, kind) != kind)
        if clash:
            why = f"double reveal: survivor list asks for the other kind of share already revealed: {clash}"
            raise self._refuse(survivors.round, why)
        got = state.received
        self_mask_shares = {v: got[v].self_mask_share for v, k in wanted.items() if k == _SELF_MASK}
        mask_key_shares = {v: got[v].mask_key_share for v, k in wanted.items() if k == _MASK_KEY}
        unsigned = UnmaskReveal(self.federation, survivors.round, self.device_id, self_mask_shares,
                                mask_key_shares)  # fmt: skip
        reveal = replace(unsigned, signature=keys.sign(self._identity, unsigned.signed_bytes()))
        state.revealed.update(wanted)
        state.survivors = u3
        state.reveal = reveal
        return reveal

    def on_seed_request(self, request: SeedRequest) -> SeedReveal:
        """Reveal the pair seeds asked for after this device's reveal (rules: :mod:`shared.secagg.seeds`)."""
        state = self._current(request.federation, request.round, "seed request")
        try:
            return seeds.on_request(request, state, device=self.device_id, identity=self._identity,
                                    aggregator_key=self._aggregator_key,
                                    directory=self._directory)  # fmt: skip
        except (SecAggError, KeyError) as exc:
            raise self._refuse(request.round, f"seed request refused: {exc}") from exc
