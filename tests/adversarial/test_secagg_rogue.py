"""One rogue enrolled device against the SecAgg+ core: the round closes with the honest sum and the rogue
is named, or (where docs/security.md says the attack is still open) the rogue, not an honest device, is
named in the abandonment.

The rogue holds a valid credential, so everything it sends is correctly signed; only its content lies.
"""

from __future__ import annotations

from dataclasses import replace

import nacl.utils
import numpy as np
import pytest

from shared.errors import SecAggError
from shared.secagg import RoundAbandoned, SecAggClient, SecAggServer, generate_identity, keys, shamir
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
        rng = np.random.default_rng(7)
        self.inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in self.clients}

    def sign_as(self, device: str, message):
        return replace(message, signature=keys.sign(self.identities[device], message.signed_bytes()))

    def honest_sum(self, devices) -> np.ndarray:
        total = sum(self.inputs[d].astype(np.uint64) for d in devices)
        return (total % (1 << BITS)).astype(np.uint32)

    def run(self, *, tamper_bundles=None, tamper_reveal=None, rogue_split=None) -> tuple[np.ndarray, dict]:
        for client in self.clients.values():
            self.server.add_advert(client.advertise(1))
        roster = self.server.make_roster()
        for d, client in self.clients.items():
            original = shamir.split
            if rogue_split is not None and d == ROGUE:  # only the rogue deals with the tampered split
                shamir.split = rogue_split(original)
            try:
                bundles = client.on_roster(roster)
            finally:
                shamir.split = original
            if tamper_bundles is not None and d == ROGUE:
                bundles = tamper_bundles(bundles)
            for bundle in bundles:
                self.server.add_shares(bundle)
        shared = self.server.close_share_phase()
        refused = {d: self.clients[d].open_all(self.server.shares_for(d)) for d in shared.devices}
        for d in shared.devices:
            y = self.clients[d].mask(self.inputs[d], shared)
            self.server.add_masked(self.clients[d].masked_input(y.astype("<u4").tobytes()))
        survivors = self.server.close_masked_phase()
        for d in survivors.devices:
            reveal = self.clients[d].on_survivors(survivors)
            if tamper_reveal is not None and d == ROGUE:
                reveal = self.sign_as(ROGUE, tamper_reveal(reveal))
            self.server.add_reveal(reveal)
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


def test_inconsistent_dealer_without_a_consistent_subset_is_named_not_an_honest_device() -> None:
    """Shares off any one polynomial: the round is abandoned (no VSS yet, see docs/security.md), and the
    log and counter name the dealer, not the honest devices whose reveals expose it."""
    run = Round()
    with pytest.raises(RoundAbandoned, match=ROGUE):
        run.run(rogue_split=_dealing({1, 2, 3, 4, 5, 6}))
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


@pytest.mark.parametrize("kind", ["garbage", "rewrapped"])
def test_bundles_refused_by_every_neighbour_name_the_rogue(kind: str) -> None:
    """Bad bundles to all neighbours: nobody can rebuild the rogue's self mask, so this round cannot
    close (docs/security.md: a complaint phase would close it); the rogue, and only it, is named, which
    quarantines it from the next rounds."""
    run = Round()

    def tamper(bundles: list[EncryptedShares]) -> list[EncryptedShares]:
        if kind == "garbage":
            return [replace(b, ciphertext=nacl.utils.random(len(b.ciphertext))) for b in bundles]
        shifted = bundles[1:] + bundles[:1]
        return [replace(b, ciphertext=c.ciphertext) for b, c in zip(bundles, shifted)]

    with pytest.raises(RoundAbandoned, match=ROGUE):
        run.run(tamper_bundles=tamper)
    assert run.server.offences.by_sender() == {ROGUE: {BUNDLES_REFUSED: 1}}
