"""Inconsistency proofs and the device's pair-seed rule (shared/secagg/proofs.py, shared/secagg/seeds.py).

A proof against an honest dealer must be impossible to make: honest shares always rebuild the committed
seed, a changed share no longer matches the dealer's digest, and digests not signed by the dealer are
refused. A device never reveals the pair seed with a neighbour whose self-mask share it revealed unless
a valid proof comes with the request.
"""

from __future__ import annotations

from dataclasses import replace

import nacl.utils
import pytest

from shared.errors import SecAggError
from shared.secagg import keys, proofs, shamir
from shared.wire import decode, encode
from shared.wire.secagg import SurvivorList, digests_signed_bytes
from shared.wire.seeds import InconsistencyProof, SeedRequest, SeedReveal
from tests.adversarial.test_secagg_rogue import FED, ROGUE, N, Round, _dealing

HONEST = "dev-3"


def _dealt(run: Round, dealer: str) -> tuple[dict[str, bytes], bytes, dict[str, bytes]]:
    """A dealer's signed digest map and the self-mask shares its neighbours opened."""
    digests = {h: run.server._bundles[(dealer, h)].digest for h in run.server.graph[dealer]}
    signature = run.server.exclusion.signed_digests[dealer][1]
    shares = {h: run.clients[h]._round.received[dealer].self_mask_share for h in run.server.graph[dealer]}
    return digests, signature, shares


def _verify(run: Round, proof: InconsistencyProof) -> None:
    advert = run.server.adverts[proof.dealer]
    dealer_keys = (advert.enc_pk, advert.mask_pk)
    proofs.verify_proof(proof, federation=FED, round_id=1, identity=run.directory[proof.dealer],
                        dealer_keys=dealer_keys, threshold=run.server.threshold)  # fmt: skip


def _proof(run: Round, dealer: str, digests, signature, shares) -> InconsistencyProof:  # type: ignore[no-untyped-def]
    """A proof made of these shares, with the dealer's real advert signature and commitment."""
    advert = run.server.adverts[dealer]
    commitment = advert.self_mask_commitment
    return InconsistencyProof(dealer, digests, signature, shares, commitment, advert.signature)


def _through_the_share_phase(run: Round) -> SurvivorList:
    """Run every device through adverts, roster and share bundles (no digest signatures: no proof is
    made here) and close the share phase; the test then drives the masked phase itself."""
    for client in run.clients.values():
        run.server.add_advert(client.advertise(1))
    roster = run.server.make_roster()
    for client in run.clients.values():
        for bundle in client.on_roster(roster):
            run.server.add_shares(bundle)
    return run.server.close_share_phase()


def _signed_request(run: Round, dealers: list[str], proof_list: list[InconsistencyProof]) -> SeedRequest:
    unsigned = SeedRequest(FED, 1, dealers, proof_list)
    return replace(unsigned, signature=keys.sign(run.aggregator, unsigned.signed_bytes()))


def test_a_proof_against_an_inconsistent_dealer_verifies_and_survives_the_wire() -> None:
    run = Round()
    run.run(rogue_split=_dealing({1, 2, 3, 4, 5, 6}))
    assert run.request is not None
    (proof,) = run.request.proofs
    _verify(run, proof)
    assert decode(encode(run.request)) == run.request


def test_no_proof_can_be_made_or_forged_against_an_honest_dealer() -> None:
    run = Round()
    run.run()
    t = run.server.threshold
    digests, signature, shares = _dealt(run, HONEST)
    assert proofs.make_proof(HONEST, shares, signed=(digests, signature), advert=run.server.adverts[HONEST],
                             threshold=t) is None  # fmt: skip
    holders = sorted(shares)[:t]
    honest = _proof(run, HONEST, digests, signature, {h: shares[h] for h in holders})
    with pytest.raises(SecAggError, match="forged"):
        _verify(run, honest)
    changed = replace(honest, shares={**honest.shares, holders[0]: nacl.utils.random(shamir.SHARE_BYTES)})
    with pytest.raises(SecAggError, match="not the one it dealt"):
        _verify(run, changed)
    # Digests re-made for a changed share do not carry the dealer's signature...
    resigned = replace(changed, digest_signature=keys.sign(run.identities[ROGUE], b"anything"))
    with pytest.raises(SecAggError, match="bad signature"):
        _verify(run, resigned)
    # ...and the aggregator cannot sign them for it either.
    by_aggregator = keys.sign(run.aggregator, digests_signed_bytes(FED, 1, HONEST, digests))
    forged = replace(changed, digest_signature=by_aggregator)
    with pytest.raises(SecAggError, match="bad signature"):
        _verify(run, forged)
    with pytest.raises(SecAggError, match="needs"):
        _verify(run, replace(honest, shares={h: shares[h] for h in holders[:-1]}))
    # A commitment the dealer never advertised (its honest shares then "miss" it) is not signed by it.
    elsewhere = replace(honest, commitment=keys.commit_self_mask(bytes(32)))
    with pytest.raises(SecAggError, match="bad signature on advert"):
        _verify(run, elsewhere)


def test_devices_refuse_a_survivors_pair_seed_without_a_valid_proof() -> None:
    """The aggregator asks for the pair seeds with an honest survivor (whose self-mask shares everybody
    revealed): with no proof, or a forged one, every honest neighbour refuses; nothing is revealed."""
    run = Round()
    run.run()
    digests, signature, shares = _dealt(run, HONEST)
    holders = sorted(shares)[: run.server.threshold]
    forged = _proof(run, HONEST, digests, signature, {h: shares[h] for h in holders})
    for proof_list in ([], [forged]):
        request = _signed_request(run, [HONEST], proof_list)
        for device in run.server.graph[HONEST]:
            with pytest.raises(SecAggError, match="seed request refused"):
                run.clients[device].on_seed_request(request)
            assert run.clients[device]._round.seed_reveal is None


def test_devices_reveal_pair_seeds_for_a_dropped_dealer_and_refuse_unsigned_requests() -> None:
    """For a dealer its U3 notice listed as dropped, a device reveals the pair seed on a signed request
    (no proof needed: it revealed no share of that dealer's self mask); the seed is the one it masked with."""
    run = Round()
    shared = _through_the_share_phase(run)
    for d in shared.devices:
        run.clients[d].open_all(run.server.shares_for(d))
        y = run.clients[d].mask(run.inputs[d], shared)
        if d != HONEST:
            run.server.add_masked(run.clients[d].masked_input(y.astype("<u4").tobytes()))
    survivors = run.server.close_masked_phase()
    for d in survivors.devices:
        run.server.add_reveal(run.clients[d].on_survivors(survivors))
    request = _signed_request(run, [HONEST], [])
    neighbour = run.server.graph[HONEST][0]
    with pytest.raises(SecAggError, match="bad signature"):
        run.clients[neighbour].on_seed_request(replace(request, signature=bytes(64)))
    reveal = run.clients[neighbour].on_seed_request(request)
    assert isinstance(reveal, SeedReveal) and list(reveal.seeds) == [HONEST]
    mine = run.clients[neighbour]._round
    their_key = run.server.adverts[HONEST].mask_pk
    expected = keys.pair_seed(mine.keys.mask_sk, their_key, FED, 1, neighbour, HONEST)
    assert reveal.seeds[HONEST] == expected
    assert run.clients[neighbour].on_seed_request(request) == reveal  # a duplicate gets the same answer
    with pytest.raises(SecAggError, match="different seed request"):
        run.clients[neighbour].on_seed_request(_signed_request(run, [HONEST, ROGUE], []))
    assert len(run.server.graph[HONEST]) == N - 1


def test_a_device_starved_of_bundles_never_reveals_all_its_pair_seeds() -> None:
    """A malicious aggregator garbles every bundle addressed to one device (so it holds no share and
    reveals no self-mask share), then asks it for the pair seeds with all its neighbours while the others
    rebuild its self mask: the device keeps at least t pair seeds unrevealed and refuses; asked for k - t,
    it answers."""
    run = Round()
    victim = "dev-5"
    shared = _through_the_share_phase(run)
    for d in shared.devices:
        inbox = run.server.shares_for(d)
        if d == victim:
            inbox = [replace(b, ciphertext=nacl.utils.random(len(b.ciphertext))) for b in inbox]
        run.clients[d].open_all(inbox)
        y = run.clients[d].mask(run.inputs[d], shared)
        run.server.add_masked(run.clients[d].masked_input(y.astype("<u4").tobytes()))
    survivors = SurvivorList(FED, 1, "masked", sorted(shared.devices))  # re-signed: refusal reports ignored
    survivors = replace(survivors, signature=keys.sign(run.aggregator, survivors.signed_bytes()))
    run.clients[victim].on_survivors(survivors)
    assert not run.clients[victim]._round.reveal.self_mask_shares  # it held none
    neighbours = list(run.server.graph[victim])
    t = run.server.threshold
    with pytest.raises(SecAggError, match="below the threshold"):
        run.clients[victim].on_seed_request(_signed_request(run, neighbours, []))
    assert run.clients[victim]._round.seed_reveal is None
    reveal = run.clients[victim].on_seed_request(_signed_request(run, neighbours[: len(neighbours) - t], []))
    assert len(reveal.seeds) == len(neighbours) - t


def test_the_aggregator_keeps_only_signatures_over_the_digests_it_routed() -> None:
    """A dealer's signed digests must be exactly those of the bundles the aggregator stored for it (first
    wins), cover every neighbour and verify; otherwise no proof can rest on them."""
    run = Round()
    for client in run.clients.values():
        run.server.add_advert(client.advertise(1))
    roster = run.server.make_roster()
    dealer = "dev-2"
    bundles = run.clients[dealer].on_roster(roster)
    for bundle in bundles:
        run.server.add_shares(bundle)
    digests = {b.recipient: b.digest for b in bundles}
    sign = run.clients[dealer].sign_digests
    other = {**digests, bundles[0].recipient: bytes(32)}
    assert not run.server.add_digest_signature(dealer, other, sign(1, other))  # not what it dealt
    partial = dict(list(digests.items())[1:])
    assert not run.server.add_digest_signature(dealer, partial, sign(1, partial))  # not every neighbour
    assert not run.server.add_digest_signature(dealer, digests, sign(2, digests))  # another round's
    assert not run.server.add_digest_signature(dealer, digests, keys.sign(run.aggregator, b"x" * 64))
    assert run.server.add_digest_signature(dealer, digests, sign(1, digests))
    assert run.server.exclusion.signed_digests[dealer][0] == digests
