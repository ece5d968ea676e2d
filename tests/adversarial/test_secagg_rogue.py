"""One rogue enrolled device against the SecAgg+ core: the round closes with the exact sum of the honest
survivors and the rogue is named (docs/security.md, "Hostile devices"); a dealer nobody can rebuild is
excluded and its pairwise masks removed with the pair seeds its neighbours reveal (secagg/exclusion.py).

The rogue holds a valid credential, so everything it sends is correctly signed; only its content lies.
"""

from __future__ import annotations

from dataclasses import replace

import nacl.utils
import numpy as np
import pytest

from shared.errors import SecAggError
from shared.secagg import SecAggClient, SecAggServer, generate_identity, keys, shamir
from shared.secagg.attribution import (
    BUNDLES_REFUSED,
    CORRUPT_REVEAL,
    DISPUTED_SHARE,
    INCONSISTENT_DEALER,
    WEAK_KEY,
)
from shared.wire.secagg import AdvertiseKeys, EncryptedShares, Roster, RosterMember

FED = "fed-rogue"
N = 8
LENGTH = 40
BITS = 16
ROGUE = "dev-0"  # sorts first: a device that stopped at the first bad bundle would open nothing
LOW_ORDER = [bytes(32), (1).to_bytes(32, "little"), ((1 << 255) - 20).to_bytes(32, "little")]


class Round:
    """An 8-device round (k = 7, t = 4: three corrupt reveals among seven are corrected)."""

    def __init__(self) -> None:
        self.aggregator = generate_identity()
        self.identities = {f"dev-{i}": generate_identity() for i in range(N)}
        self.directory = {d: bytes(k.verify_key) for d, k in self.identities.items()}
        self.clients = {
            d: SecAggClient(FED, d, k, bytes(self.aggregator.verify_key), self.directory)
            for d, k in self.identities.items()
        }
        self.server = SecAggServer(FED, 1, self.aggregator, self.directory, BITS, LENGTH, delta=0.2, gamma=0)
        self.rogues = {ROGUE}
        rng = np.random.default_rng(7)
        self.inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in self.clients}

    def sign_as(self, device: str, message):
        return replace(message, signature=keys.sign(self.identities[device], message.signed_bytes()))

    def honest_sum(self, devices) -> np.ndarray:
        total = sum(self.inputs[d].astype(np.uint64) for d in devices)
        return (total % (1 << BITS)).astype(np.uint32)

    def run(
        self, *, tamper_bundles=None, tamper_reveal=None, rogue_split=None, tamper_masked=None, reports=True
    ) -> tuple[np.ndarray, dict]:
        for client in self.clients.values():
            self.server.add_advert(client.advertise(1))
        roster = self.server.make_roster()
        for d, client in self.clients.items():
            original = shamir.split
            if rogue_split is not None and d in self.rogues:  # only a rogue deals with the tampered split
                shamir.split = rogue_split(original)
            try:
                bundles = client.on_roster(roster)
            finally:
                shamir.split = original
            if tamper_bundles is not None and d in self.rogues:
                bundles = tamper_bundles(bundles)
            for bundle in bundles:
                self.server.add_shares(bundle)
            digests = {b.recipient: b.digest for b in bundles}  # signed, as in its ShareBatch upload
            assert self.server.add_digest_signature(d, digests, client.sign_digests(1, digests))
        shared = self.server.close_share_phase()
        refused = {d: self.clients[d].open_all(self.server.shares_for(d)) for d in shared.devices}
        for d in shared.devices:
            y = self.clients[d].mask(self.inputs[d], shared)
            masked = self.clients[d].masked_input(y.astype("<u4").tobytes())
            if tamper_masked is not None and d == ROGUE:
                masked = self.sign_as(ROGUE, tamper_masked(masked))
            if not reports:  # a client that predates refusal reports
                masked = self.sign_as(d, replace(masked, refused=[]))
            self.server.add_masked(masked)
        survivors = self.server.close_masked_phase()
        for d in survivors.devices:
            reveal = self.clients[d].on_survivors(survivors)
            if tamper_reveal is not None and d == ROGUE:
                reveal = self.sign_as(ROGUE, tamper_reveal(reveal))
            self.server.add_reveal(reveal)
        self.request = self.server.seed_request()
        if self.request is not None:  # the pair-seed step, only when a dealer could not be rebuilt
            for d in sorted(self.server.masked):
                self.server.add_seed_reveal(self.clients[d].on_seed_request(self.request))
        return self.server.unmask(), refused


@pytest.mark.parametrize("weak", LOW_ORDER)
@pytest.mark.parametrize("which", ["enc_pk", "mask_pk"])
def test_weak_key_advert_is_refused_and_named(weak: bytes, which: str) -> None:
    run = Round()
    advert = run.clients[ROGUE].advertise(1)
    forged = run.sign_as(ROGUE, replace(advert, **{which: weak}))
    with pytest.raises(SecAggError, match="low-order"):
        run.server.add_advert(forged)
    assert run.server.offences.by_sender() == {ROGUE: {WEAK_KEY: 1}}
    assert ROGUE not in run.server.adverts


def test_device_refuses_a_roster_carrying_a_weak_key() -> None:
    """Even if an aggregator let a weak key through, no honest device builds a Box or seed with it."""
    run = Round()
    adverts = [c.advertise(1) for c in run.clients.values()]
    bad = run.sign_as(ROGUE, replace(adverts[0], mask_pk=bytes(32)))
    members = [
        RosterMember(a.device, a.enc_pk, a.mask_pk, a.self_mask_commitment, a.signature)
        for a in [bad, *adverts[1:]]
    ]
    from shared.secagg.graph import graph_seed
    from shared.secagg.roster import member_digest

    seed = graph_seed(FED, 1, [(m.device, member_digest(m, FED, 1)) for m in members])
    roster = Roster(FED, 1, members, seed, N - 1, 4, BITS, LENGTH)
    roster = replace(roster, signature=keys.sign(run.aggregator, roster.signed_bytes()))
    with pytest.raises(SecAggError, match=f"mask key of '{ROGUE}'.*low-order"):
        run.clients["dev-1"].on_roster(roster)
    assert isinstance(bad, AdvertiseKeys)


@pytest.mark.parametrize("kind", ["garbage", "rewrapped", "truncated"])
def test_bad_bundles_cost_only_the_rogues_shares(kind: str) -> None:
    """The rogue spoils its bundles to k - t neighbours: each opens every other bundle, the sum is exact."""
    run = Round()
    victims: list[str] = []

    def tamper(bundles: list[EncryptedShares]) -> list[EncryptedShares]:
        out = []
        for i, b in enumerate(bundles):
            if i < 3:  # k - t = 3 spoiled bundles still leave t = 4 holders of the rogue's shares
                victims.append(b.recipient)
                if kind == "garbage":
                    b = replace(b, ciphertext=nacl.utils.random(len(b.ciphertext)))
                elif kind == "rewrapped":  # another pair's valid bundle, re-addressed
                    b = replace(b, ciphertext=bundles[i + 3].ciphertext)
                else:
                    b = replace(b, ciphertext=b.ciphertext[:10])
            out.append(b)
        return out

    total, refused = run.run(tamper_bundles=tamper)
    np.testing.assert_array_equal(total, run.honest_sum(run.clients))
    for victim in victims:
        assert list(refused[victim]) == [ROGUE]  # named, and nothing else was refused
        assert len(run.clients[victim]._round.received) == N - 2  # opened every honest bundle
    assert not any(refused[d] for d in refused if d not in victims)


def test_corrupt_reveal_is_attributed_to_its_sender() -> None:
    """The rogue reveals wrong shares of every honest neighbour: the sum is exact, only the rogue is named."""
    run = Round()

    def tamper(reveal):
        return replace(
            reveal,
            self_mask_shares={v: nacl.utils.random(shamir.SHARE_BYTES) for v in reveal.self_mask_shares},
        )

    total, _ = run.run(tamper_reveal=tamper)
    np.testing.assert_array_equal(total, run.honest_sum(run.clients))
    named = run.server.offences.by_sender()
    assert named == {ROGUE: {CORRUPT_REVEAL: N - 1}}


def _dealing(bad_holders):
    """A rogue's Shamir split: random values (off the polynomial) for the holders at these indices."""

    def rogue_split(original):
        def inconsistent(secret, threshold, holders):
            shares = original(secret, threshold, holders)
            return [
                nacl.utils.random(shamir.SHARE_BYTES) if i in bad_holders else s for i, s in enumerate(shares)
            ]

        return inconsistent

    return rogue_split


def test_inconsistent_dealer_with_t_good_shares_is_named_and_the_round_closes() -> None:
    """Three of seven holders get shares off the polynomial (digests published for what was dealt, so the
    holders accept them): the sum is exact, the dealer is named, no honest holder is."""
    run = Round()
    total, refused = run.run(rogue_split=_dealing({1, 3, 5}))
    np.testing.assert_array_equal(total, run.honest_sum(run.clients))
    assert not any(refused.values())
    assert run.server.offences.by_sender() == {ROGUE: {INCONSISTENT_DEALER: 3}}


def test_inconsistent_dealer_without_a_consistent_subset_is_excluded_with_a_proof() -> None:
    """Shares off any one polynomial: the aggregator proves it (t digest-matching shares that do not rebuild
    the commitment), every honest neighbour checks the proof and reveals its pair seed with the dealer, and
    the round closes with the exact sum of the honest devices; only the dealer is named."""
    run = Round()
    total, refused = run.run(rogue_split=_dealing({1, 2, 3, 4, 5, 6}))
    np.testing.assert_array_equal(total, run.honest_sum(d for d in run.clients if d != ROGUE))
    assert not any(refused.values())
    assert run.request is not None and run.request.dealers == [ROGUE]
    assert [p.dealer for p in run.request.proofs] == [ROGUE]
    assert ROGUE not in run.server.masked
    assert run.server.offences.by_sender() == {ROGUE: {INCONSISTENT_DEALER: 1}}


def test_without_digests_a_wrong_share_is_disputed_not_proven() -> None:
    """An older client publishes no digests: a wrong revealed share is recorded as disputed."""
    run = Round()

    def strip(bundles):
        return [replace(b, digest=b"") for b in bundles]

    def tamper(reveal):
        return replace(
            reveal,
            self_mask_shares={v: nacl.utils.random(shamir.SHARE_BYTES) for v in reveal.self_mask_shares},
        )

    for client in run.clients.values():
        run.server.add_advert(client.advertise(1))
    roster = run.server.make_roster()
    for client in run.clients.values():
        for bundle in strip(client.on_roster(roster)):
            run.server.add_shares(bundle)
    shared = run.server.close_share_phase()
    for d in shared.devices:
        run.clients[d].open_all(run.server.shares_for(d))
        y = run.clients[d].mask(run.inputs[d], shared)
        run.server.add_masked(run.clients[d].masked_input(y.astype("<u4").tobytes()))
    survivors = run.server.close_masked_phase()
    for d in survivors.devices:
        reveal = run.clients[d].on_survivors(survivors)
        run.server.add_reveal(run.sign_as(ROGUE, tamper(reveal)) if d == ROGUE else reveal)
    np.testing.assert_array_equal(run.server.unmask(), run.honest_sum(run.clients))
    assert run.server.offences.by_sender() == {ROGUE: {DISPUTED_SHARE: N - 1}}


def _spoil(kind: str, first: int):
    """Spoil the rogue's bundles to its first ``first`` neighbours (garbage, or rotated among them)."""

    def tamper(bundles: list[EncryptedShares]) -> list[EncryptedShares]:
        bad, good = bundles[:first], bundles[first:]
        if kind == "garbage":
            return [replace(b, ciphertext=nacl.utils.random(len(b.ciphertext))) for b in bad] + good
        shifted = bad[1:] + bad[:1]
        return [replace(b, ciphertext=c.ciphertext) for b, c in zip(bad, shifted)] + good

    return tamper


@pytest.mark.parametrize("kind", ["garbage", "rewrapped"])
@pytest.mark.parametrize("spoiled", [N - 1, 4])  # every neighbour; k - t + 1 (t - 1 still hold shares)
def test_bundles_refused_by_too_many_neighbours_exclude_the_rogue(kind: str, spoiled: int) -> None:
    """Fewer than t neighbours can open the rogue's bundles: their refusal reports exclude it at the masked
    close (its input leaves the sum, U3 lists it as dropped), they reveal their pair seeds with it, and the
    round closes with the exact sum of the honest devices. Only the rogue is named, which quarantines it."""
    run = Round()
    total, refused = run.run(tamper_bundles=_spoil(kind, spoiled))
    np.testing.assert_array_equal(total, run.honest_sum(d for d in run.clients if d != ROGUE))
    assert sum(ROGUE in r for r in refused.values()) == spoiled
    assert run.request is not None and run.request.dealers == [ROGUE] and not run.request.proofs
    assert run.server.offences.by_sender() == {ROGUE: {BUNDLES_REFUSED: 1}}


def test_bundles_refused_without_reports_still_exclude_the_rogue() -> None:
    """Devices that send no refusal report (older clients): the rogue reaches U3, nobody holds a share of
    its self mask, so nobody revealed one and all may reveal their pair seeds with it without a proof."""
    run = Round()
    total, refused = run.run(tamper_bundles=_spoil("garbage", N - 1), reports=False)
    assert sum(ROGUE in r for r in refused.values()) == N - 1
    assert run.request is not None and run.request.dealers == [ROGUE] and not run.request.proofs
    np.testing.assert_array_equal(total, run.honest_sum(d for d in run.clients if d != ROGUE))
    assert run.server.offences.by_sender() == {ROGUE: {BUNDLES_REFUSED: 1}}


def test_a_lying_reporter_does_not_exclude_an_honest_dealer() -> None:
    """The rogue reports refusing every honest neighbour's bundle: one report is far below what excluding a
    dealer takes (more than k - t refusals), so every input is summed and nobody is named."""
    run = Round()
    everybody = sorted(d for d in run.clients if d != ROGUE)
    total, _ = run.run(tamper_masked=lambda m: replace(m, refused=everybody))
    np.testing.assert_array_equal(total, run.honest_sum(run.clients))
    assert run.request is None
    assert run.server.offences.by_sender() == {}


@pytest.mark.parametrize("attack", ["garbage", "inconsistent"])
def test_two_colluding_rogues_are_both_excluded_and_the_round_closes(attack: str) -> None:
    """Two rogues (k - t = 3 tolerates them) attack together: both are excluded in the same round, each
    honest device reveals two pair seeds and still keeps t unrevealed, and the sum is the honest one."""
    run = Round()
    run.rogues = {ROGUE, "dev-7"}
    if attack == "garbage":
        total, _ = run.run(tamper_bundles=_spoil("garbage", N - 1))
        rule = BUNDLES_REFUSED
    else:
        total, _ = run.run(rogue_split=_dealing({1, 2, 3, 4, 5, 6}))
        rule = INCONSISTENT_DEALER
    np.testing.assert_array_equal(total, run.honest_sum(d for d in run.clients if d not in run.rogues))
    assert run.request is not None and set(run.request.dealers) == run.rogues
    assert run.server.offences.by_sender() == {r: {rule: 1} for r in run.rogues}


def test_a_round_whose_dealers_cannot_be_rebuilt_is_abandoned_not_unmasked_over_fewer_than_t() -> None:
    """No survivor revealed (a mass dropout in the unmask phase, as a broker crash can cause): every
    dealer would be excluded, and the aggregator must not unmask a sum of fewer than t inputs -- with one
    left it would be that device's input alone; with none, nothing (the soak once 'refused' such an empty
    aggregate)."""
    from shared.secagg import RoundAbandoned

    run = Round()
    for client in run.clients.values():
        run.server.add_advert(client.advertise(1))
    roster = run.server.make_roster()
    for d, client in run.clients.items():
        bundles = client.on_roster(roster)
        for bundle in bundles:
            run.server.add_shares(bundle)
        digests = {b.recipient: b.digest for b in bundles}
        run.server.add_digest_signature(d, digests, client.sign_digests(1, digests))
    shared = run.server.close_share_phase()
    for d in shared.devices:
        run.clients[d].open_all(run.server.shares_for(d))
        y = run.clients[d].mask(run.inputs[d], shared)
        run.server.add_masked(run.clients[d].masked_input(y.astype("<u4").tobytes()))
    run.server.close_masked_phase()
    with pytest.raises(RoundAbandoned, match="too few reveals to unmask: 0 inputs left"):
        run.server.seed_request()
    assert run.server.phase == "abandoned"
