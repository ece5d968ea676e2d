"""Aggregator side of SecAgg+: a pure, phase-by-phase round engine core (no I/O, no clocks).

Phases (Bonawitz et al. CCS 2017 Fig. 4; Bell et al. CCS 2020 §4), each closed by the caller when its
deadline passes:

``advertise``  :meth:`add_advert` ... :meth:`make_roster` (signed; fixes k, t, graph)
``share``      :meth:`add_shares` ... :meth:`close_share_phase` -> signed U2. Devices that did not
               deliver a bundle to every neighbour are out *before anybody masks*, so an early dropout
               never costs a reconstruction and never kills the round.
``mask``       :meth:`add_masked` (running modular sum, O(d) memory) ... :meth:`close_masked_phase`
               -> signed U3.
``unmask``     :meth:`add_reveal` ... [:meth:`seed_request` ... :meth:`add_seed_reveal`, only for a
               dealer nobody can rebuild: :mod:`shared.secagg.exclusion`] ... :meth:`unmask` -> exact
               sum mod 2^b of the survivors' inputs.

Below the threshold at any close the round is abandoned with :class:`RoundAbandoned` (no model change).
Only what is needed is rebuilt: survivors' self-mask seeds and the mask keys of dropped devices with a
surviving neighbour. Mask removal is chunked and may run on a thread or process pool (``prg``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NoReturn

import nacl.signing
import numpy as np

from shared.errors import ConfigError, SecAggError
from shared.offences import Offences
from shared.secagg import bundles, claims, exclusion, keys, prg, shamir
from shared.secagg.attribution import CORRUPT_REVEAL, WEAK_KEY, Attribution, derives, opens
from shared.secagg.graph import neighbour_graph, share_index, threshold_core, unmask_obstacle
from shared.secagg.params import SecAggParams, choose_params
from shared.secagg.roster import members_of, members_seed
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


class RoundAbandoned(SecAggError):
    """The round cannot complete securely (too few devices or shares); apply no model change."""


def unpack_raw(message: MaskedInput) -> np.ndarray:
    """Placeholder unpacker: the payload is the raw little-endian uint32 vector."""
    if len(message.payload) != 4 * message.length:
        raise SecAggError(f"payload of {len(message.payload)} bytes is not {message.length} uint32 values")
    return np.frombuffer(message.payload, dtype="<u4").astype(np.uint32, copy=False)


class SecAggServer(claims.MaskedClaims):
    """One round of secure aggregation, as the aggregator sees it."""

    def __init__(
        self,
        federation: str,
        round_id: int,
        identity: nacl.signing.SigningKey,
        directory: Mapping[str, bytes],
        bits: int,
        length: int,
        *,
        delta: float = 0.2,
        gamma: float = 0.1,
        params: SecAggParams | None = None,
        unpack: Callable[[MaskedInput], np.ndarray] = unpack_raw,
        offences: Offences | None = None,
    ) -> None:
        prg.check_bits(bits)
        if length < 0:
            raise ConfigError("secagg.length", f"must be >= 0, got {length}")
        self.federation = federation
        self.round_id = round_id
        self.bits = bits
        self.length = length
        self.delta = delta
        self.gamma = gamma
        self.phase = "advertise"
        self._identity = identity
        self._directory = directory
        self._fixed_params = params
        self._unpack = unpack
        self.params: SecAggParams | None = None
        self.adverts: dict[str, AdvertiseKeys] = {}
        self.roster: Roster | None = None
        self.graph: dict[str, tuple[str, ...]] = {}
        self._bundles: dict[tuple[str, str], EncryptedShares] = {}
        #: The same bundles by recipient, then sender: forwarding a device's inbox is O(k), not O(n k).
        self._to: dict[str, dict[str, EncryptedShares]] = {}
        self.shared: frozenset[str] = frozenset()
        self.masked: frozenset[str] = frozenset()
        self._masked_from: set[str] = set()
        self._sum = np.zeros(length, dtype=np.uint32)
        self.self_mask_shares: dict[str, dict[int, bytes]] = {}
        self.mask_key_shares: dict[str, dict[int, bytes]] = {}
        self._revealed_by: set[str] = set()
        #: Named misbehaviour (device, rule) of this round; the aggregator shares one across rounds.
        self.offences = offences if offences is not None else Offences()
        self._attribution = Attribution(federation, round_id, self.graph, self._bundles, self.offences)
        #: Refusal reports, kept inputs, excluded dealers and pair seeds (shared/secagg/exclusion.py).
        self.exclusion = exclusion.Exclusion(federation, round_id, self.offences)

    # -- helpers -------------------------------------------------------------------------------
    def _refuse(self, device: str | None, reason: str, abandon: bool = False) -> SecAggError:
        log.warning(
            "secagg %s round=%s device=%s phase=%s: %s",
            "abandon" if abandon else "refusal",
            self.round_id,
            device,
            self.phase,
            reason,
            extra={"round": self.round_id, "device": device, "phase": self.phase},
        )
        error = RoundAbandoned if abandon else SecAggError
        return error(f"round {self.round_id}: {reason}")

    def _check_round(self, federation: str, round_id: int, device: str, phase: str) -> None:
        if federation != self.federation or round_id != self.round_id:
            raise self._refuse(device, f"message for {federation!r}/{round_id} (replayed or misrouted)")
        if self.phase != phase:
            raise self._refuse(device, f"{phase} message arrived in phase {self.phase!r}")

    def _verify_device(self, device: str, payload: bytes, signature: bytes, what: str) -> None:
        identity = self._directory.get(device)
        if identity is None:
            raise self._refuse(device, f"{what} from unenrolled device")
        try:
            keys.verify(identity, payload, signature, what)
        except SecAggError as exc:
            raise self._refuse(device, str(exc)) from exc

    def _notice(self, phase: str, devices: frozenset[str]) -> SurvivorList:
        unsigned = SurvivorList(self.federation, self.round_id, phase, sorted(devices))
        return replace(unsigned, signature=keys.sign(self._identity, unsigned.signed_bytes()))

    def received(self, phase: str) -> int:
        """How many share bundles ("share"), masked inputs ("mask") or reveals ("unmask") arrived."""
        return len({"share": self._bundles, "mask": self._masked_from, "unmask": self._revealed_by}[phase])

    @property
    def threshold(self) -> int:
        if self.params is None:
            raise SecAggError("threshold is fixed by make_roster()")
        return self.params.t

    # -- advertise -----------------------------------------------------------------------------
    def add_advert(self, advert: AdvertiseKeys) -> bool:
        """Record a signed advert; returns False for a duplicate."""
        self._check_round(advert.federation, advert.round, advert.device, "advertise")
        self._verify_device(advert.device, advert.signed_bytes(), advert.signature, "advert")
        for name, key in (("encryption key", advert.enc_pk), ("mask key", advert.mask_pk)):
            try:
                keys.check_public_key(key, name)
            except SecAggError as exc:
                self.offences.record(advert.device, WEAK_KEY, str(exc), context=f"round={self.round_id}")
                raise self._refuse(advert.device, f"{exc}: advert refused") from exc
        earlier = self.adverts.get(advert.device)
        if earlier is not None:
            if earlier == advert:
                return False
            raise self._refuse(advert.device, "second advert with different keys")
        self.adverts[advert.device] = advert
        return True

    def make_roster(self) -> Roster:
        """Close the advertise phase: fix members, (k, t), the graph; sign the roster."""
        if self.phase != "advertise":
            raise self._refuse(None, "roster already made")
        n = len(self.adverts)
        try:
            self.params = self._fixed_params or choose_params(n, self.delta, self.gamma)
        except ConfigError as exc:
            self.phase = "abandoned"
            raise self._refuse(None, f"{n} adverts: {exc}", abandon=True) from exc
        if self.params.n != n:
            self.abandon(None, f"parameters are for {self.params.n} devices, got {n}")
        members = members_of(self.adverts.values())
        seed = members_seed(self.federation, self.round_id, members)
        self.graph = neighbour_graph([m.device for m in members], self.params.k, seed)
        self._attribution.graph = self.graph
        unsigned = Roster(
            self.federation,
            self.round_id,
            members,
            seed,
            self.params.k,
            self.params.t,
            self.bits,
            self.length,
        )
        self.roster = replace(unsigned, signature=keys.sign(self._identity, unsigned.signed_bytes()))
        self.phase = "share"
        return self.roster

    # -- share ---------------------------------------------------------------------------------
    def add_shares(self, bundle: EncryptedShares) -> bool:
        """Record a bundle for routing; returns False for a duplicate."""
        self._check_round(bundle.federation, bundle.round, bundle.sender, "share")
        if bundle.recipient not in self.graph.get(bundle.sender, ()):
            raise self._refuse(bundle.sender, f"bundle to non-neighbour {bundle.recipient!r}")
        key = (bundle.sender, bundle.recipient)
        if key in self._bundles:
            return False
        self._bundles[key] = bundle
        self._to.setdefault(bundle.recipient, {})[bundle.sender] = bundle
        return True

    def add_digest_signature(self, dealer: str, digests: dict[str, bytes], signature: bytes) -> bool:
        """Keep a dealer's signature over its share digests (what an inconsistency proof rests on)."""
        identity = self._directory.get(dealer)
        dealt = {h: getattr(self._bundles.get((dealer, h)), "digest", None) for h in digests}  # first wins
        return identity is not None and dealt == digests and self.exclusion.note_digests(
            dealer, digests, signature, neighbours=self.graph.get(dealer, ()), identity=identity
        )

    def close_share_phase(self) -> SurvivorList:
        """U2 = devices whose bundles reached every neighbour, kept to those with t such neighbours (the
        threshold core); signed 'shared' notice. Abandons when that core is below t."""
        if self.phase != "share":
            raise self._refuse(None, f"cannot close the share phase in phase {self.phase!r}")
        delivered = frozenset(u for u, ns in self.graph.items() if all((u, v) in self._bundles for v in ns))
        core = threshold_core(self.graph, self.threshold, delivered)  # the rest would refuse to mask
        if len(core) < self.threshold:
            self.phase = "abandoned"
            reason = f"{len(delivered)} devices shared, {len(core)} have {self.threshold} sharing neighbours"
            raise self._refuse(None, f"{reason}; threshold {self.threshold}", abandon=True)
        self.shared = core
        self.phase = "mask"
        return self._notice(PHASE_SHARED, core)  # devices mask against exactly the set we unmask

    def shares_for(self, recipient: str) -> list[EncryptedShares]:
        """Bundles to forward to ``recipient`` (from U2 senders once the share phase is closed)."""
        received = self._to.get(recipient, {})
        return [received[s] for s in sorted(received) if not self.shared or s in self.shared]

    # -- mask ----------------------------------------------------------------------------------
    def add_masked(self, message: MaskedInput, vector: np.ndarray | None = None) -> bool:
        """Add a signed masked input to the running sum; returns False for a duplicate.

        ``vector`` is the unpacked payload when the caller already decoded it, else ``unpack`` runs.
        """
        self._check_round(message.federation, message.round, message.device, "mask")
        if message.device not in self.shared:
            raise self._refuse(message.device, "masked input from a device outside U2")
        if message.device in self._masked_from:
            return False
        if message.bits != self.bits or message.length != self.length:
            raise self._refuse(message.device, f"masked input bits={message.bits} length={message.length}")
        self._verify_device(message.device, message.signed_bytes(), message.signature, "masked input")
        values = self._unpack(message) if vector is None else np.asarray(vector)
        if values.shape != (self.length,) or values.dtype.kind not in "ui":
            raise self._refuse(message.device, f"masked vector has shape {values.shape} {values.dtype}")
        if self.length and int(values.max()) >> self.bits:
            raise self._refuse(message.device, f"masked vector has values outside Z_2^{self.bits}")
        np.add(self._sum, values.astype(np.uint32, copy=False), out=self._sum)
        self.exclusion.note_masked(message, self.graph[message.device])
        self._masked_from.add(message.device)
        return True

    def close_masked_phase(self) -> SurvivorList:
        """U3 = devices whose masked input arrived; signed 'masked' notice."""
        if self.phase != "mask":
            raise self._refuse(None, f"cannot close the mask phase in phase {self.phase!r}")
        excluded = self.exclusion.refused_dealers(self.graph, frozenset(self._masked_from), self.threshold)
        survivors = frozenset(self._masked_from) - excluded  # excluded dealers look dropped to devices
        obstacle = self.unmask_obstacle(survivors)
        if obstacle is not None:
            # Abandon now: survivors would refuse to reveal, or a dropped key could not be rebuilt.
            self.abandon(None, f"{len(survivors)} masked inputs cannot be unmasked: {obstacle}")
        self.masked = survivors
        for dealer in excluded:  # its masked input leaves the sum; its pair seeds are asked for later
            self.exclusion.take_out(dealer, self._sum, self._unpack)
        self.phase = "unmask"
        return self._notice(PHASE_MASKED, survivors)

    def unmask_obstacle(self, survivors: frozenset[str] | None = None) -> str | None:
        """Why these survivors (default: the inputs so far) could not be unmasked (graph.py), or None."""
        alive = frozenset(self._masked_from) if survivors is None else survivors
        return unmask_obstacle(self.graph, self.threshold, self.shared, alive)

    # -- unmask --------------------------------------------------------------------------------
    @property
    def dropped(self) -> frozenset[str]:
        """Devices that shared but did not mask (their pair masks stay in the sum)."""
        return self.shared - self.masked

    def add_reveal(self, reveal: UnmaskReveal) -> bool:
        """Record a survivor's shares; returns False for a duplicate."""
        self._check_round(reveal.federation, reveal.round, reveal.device, "unmask")
        sender = reveal.device
        if sender not in self.masked:
            raise self._refuse(sender, "reveal from a device outside U3")
        if sender in self._revealed_by:
            return False
        self._verify_device(sender, reveal.signed_bytes(), reveal.signature, "reveal")
        neighbours = set(self.graph[sender])
        bad_b = set(reveal.self_mask_shares) - (neighbours & self.masked)
        bad_key = set(reveal.mask_key_shares) - (neighbours & self.dropped)
        if bad_b or bad_key:
            raise self._refuse(sender, f"reveal asks for the wrong kind of share: {sorted(bad_b | bad_key)}")
        for shares in (reveal.self_mask_shares, reveal.mask_key_shares):
            for owner, share in shares.items():
                if len(share) != shamir.SHARE_BYTES:
                    raise self._refuse(sender, f"malformed share of {owner!r}")
        for store, shares, kind in (
            (self.self_mask_shares, reveal.self_mask_shares, bundles.SELF_MASK_KIND),
            (self.mask_key_shares, reveal.mask_key_shares, bundles.MASK_KEY_KIND),
        ):
            for owner, share in shares.items():
                if not self._attribution.matches_digest(owner, sender, kind, share):  # dropped, named
                    reason = f"revealed a share of {owner!r} that differs from the dealer's digest"
                    self.offences.record(sender, CORRUPT_REVEAL, reason, context=f"round={self.round_id}")
                    continue
                store.setdefault(owner, {})[share_index(self.graph, owner, sender)] = share
        self._revealed_by.add(sender)
        return True

    def needed_keys(self) -> list[str]:
        """Dropped devices with a surviving neighbour: their mask keys (or pair seeds) are needed."""
        return sorted(v for v in self.dropped if any(u in self.masked for u in self.graph[v]))

    def missing_shares(self) -> dict[str, int]:
        """Owner -> shares still missing before :meth:`unmask` can run (empty when ready); an owner short
        of shares although t of its neighbours revealed is named (they could not open its bundles)."""
        t = self.threshold
        missing = {u: t - len(self.self_mask_shares.get(u, {})) for u in self.masked}
        missing.update({v: t - len(self.mask_key_shares.get(v, {})) for v in self.needed_keys()})
        short = {owner: gap for owner, gap in sorted(missing.items()) if gap > 0}
        for owner in short:
            self._attribution.blame_unrevealed(owner, self._revealed_by, t)
        return short

    def recover(self, owner: str, shares: dict[int, bytes], *, mask_key: bool = False) -> bytes:
        """Rebuild ``owner``'s self-mask seed (or mask key), naming whoever lied; raises why not."""
        if len(shares) < self.threshold:
            self._attribution.blame_unrevealed(owner, self._revealed_by, self.threshold)
        advert = self.adverts[owner]
        check = derives(advert.mask_pk) if mask_key else opens(advert.self_mask_commitment)
        return self._attribution.recover(owner, shares, self.threshold, check)

    def abandon(self, device: str | None, reason: str) -> NoReturn:
        self.phase = "abandoned"
        raise self._refuse(device, reason, abandon=True)

    def exclude(self, dealer: str) -> None:
        """Take a survivor's input back out of the sum (exclusion.py decides who and keeps the input)."""
        self.masked = self.masked - {dealer}
        self.exclusion.take_out(dealer, self._sum, self._unpack)

    def seed_request(self) -> SeedRequest | None:
        """Rebuild what can be, exclude what cannot; the signed pair-seed request, or None (exclusion.py)."""
        if self.phase != "unmask":
            raise self._refuse(None, f"cannot prepare the unmask in phase {self.phase!r}")
        return exclusion.prepare(self, lambda payload: keys.sign(self._identity, payload))

    def add_seed_reveal(self, reveal: SeedReveal) -> bool:
        """Record a survivor's pair seeds with excluded dealers; returns False for a duplicate."""
        self._check_round(reveal.federation, reveal.round, reveal.device, "unmask")
        self._verify_device(reveal.device, reveal.signed_bytes(), reveal.signature, "seed reveal")
        if reveal.device in self.exclusion.revealed_seeds:
            return False
        problem = self.exclusion.add_seeds(reveal, self.graph.get(reveal.device, ()), self.masked)
        if problem is not None:
            raise self._refuse(reveal.device, problem)
        return True

    def mask_seeds(self) -> tuple[list[bytes], list[bytes]]:
        """(plus, minus) seeds whose combined mask is still in the sum (``exclusion.mask_seeds``)."""
        if self.phase != "unmask":
            raise self._refuse(None, f"cannot unmask in phase {self.phase!r}")
        return exclusion.mask_seeds(self)

    def unmask(self, workers: int | None = None, pool: str = "thread") -> np.ndarray:
        """The exact sum mod 2^b (uint32) of the surviving devices' inputs; ends the round."""
        plus, minus = self.mask_seeds()
        masks = prg.combined_mask_parallel(plus, minus, self.bits, self.length, workers=workers,
                                           pool="process" if pool == "process" else "thread")  # fmt: skip
        total: np.ndarray = self._sum - masks
        np.bitwise_and(total, prg.modulus_mask(self.bits), out=total)
        self.phase = "done"
        log.info("secagg unmasked round=%s survivors=%d dropped=%d masks=%d", self.round_id, len(self.masked),
                 len(self.dropped), len(plus) + len(minus), extra={"phase": "unmask"})  # fmt: skip
        return total
