"""Every refusal rule of the SecAgg+ core (Bonawitz et al. §6.2 active-adversary checks)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shared.errors import SecAggError
from shared.secagg import RoundAbandoned, SecAggClient, SecAggServer, generate_identity, keys, shamir
from shared.wire.secagg import PHASE_MASKED, PHASE_SHARED, Roster, SurvivorList

FED = "fed-refuse"
N = 6
LENGTH = 50
BITS = 16


class Round:
    """A 6-device round driven step by step so tests can tamper between steps."""

    def __init__(self, round_id: int = 1, identities: dict | None = None, aggregator=None) -> None:
        self.aggregator = aggregator or generate_identity()
        self.identities = identities or {f"dev-{i}": generate_identity() for i in range(N)}
        self.directory = {d: bytes(k.verify_key) for d, k in self.identities.items()}
        self.clients = {
            d: SecAggClient(FED, d, k, bytes(self.aggregator.verify_key), self.directory)
            for d, k in self.identities.items()
        }
        self.round_id = round_id
        self.server = SecAggServer(
            FED, round_id, self.aggregator, self.directory, BITS, LENGTH, delta=0.2, gamma=0
        )

    def sign(self, message):
        return replace(message, signature=keys.sign(self.aggregator, message.signed_bytes()))

    def advertise(self) -> Roster:
        for client in self.clients.values():
            self.server.add_advert(client.advertise(self.round_id))
        return self.server.make_roster()

    def share(self, roster: Roster) -> SurvivorList:
        for client in self.clients.values():
            for bundle in client.on_roster(roster):
                self.server.add_shares(bundle)
        shared = self.server.close_share_phase()
        for d, client in self.clients.items():
            for bundle in self.server.shares_for(d):
                client.on_shares(bundle)
        return shared

    def mask(self, shared: SurvivorList, who: list[str]) -> SurvivorList:
        for d in who:
            y = self.clients[d].mask(np.full(LENGTH, 3, dtype=np.uint32), shared)
            self.server.add_masked(self.clients[d].masked_input(y.tobytes()))
        return self.server.close_masked_phase()


@pytest.fixture
def run() -> Round:
    return Round()


def test_roster_with_bad_aggregator_signature_refused(run: Round) -> None:
    roster = run.advertise()
    forged = replace(roster, signature=keys.sign(generate_identity(), roster.signed_bytes()))
    with pytest.raises(SecAggError, match="bad signature on roster"):
        run.clients["dev-0"].on_roster(forged)


def test_swapped_key_refused_even_if_aggregator_signs(run: Round) -> None:
    roster = run.advertise()
    attacker = keys.RoundKeys.generate()
    members = list(roster.members)
    members[1] = replace(members[1], enc_pk=attacker.enc_pk)  # man in the middle on dev-1's bundles
    tampered = run.sign(replace(roster, members=members))
    with pytest.raises(SecAggError, match="swapped or forged key"):
        run.clients["dev-0"].on_roster(tampered)


def test_unenrolled_member_and_wrong_graph_seed_refused(run: Round) -> None:
    roster = run.advertise()
    with pytest.raises(SecAggError, match="graph seed"):
        run.clients["dev-0"].on_roster(run.sign(replace(roster, graph_seed=b"\1" * 32)))
    # a directory that does not enrol dev-5: a roster listing dev-5 is a Sybil roster
    enrolled = {d: k for d, k in run.directory.items() if d != "dev-5"}
    client = SecAggClient(FED, "dev-0", run.identities["dev-0"], bytes(run.aggregator.verify_key), enrolled)
    client.advertise(1)
    with pytest.raises(SecAggError, match="unenrolled"):
        client.on_roster(roster)


def test_too_low_threshold_refused(run: Round) -> None:
    roster = run.advertise()
    with pytest.raises(SecAggError, match="threshold"):
        run.clients["dev-0"].on_roster(run.sign(replace(roster, threshold=2)))


def test_bad_advert_signature_refused_by_server(run: Round) -> None:
    advert = run.clients["dev-0"].advertise(1)
    with pytest.raises(SecAggError, match="bad signature on advert"):
        run.server.add_advert(replace(advert, enc_pk=keys.RoundKeys.generate().enc_pk))
    run.server.add_advert(advert)
    assert run.server.add_advert(advert) is False  # duplicate counts once


def test_unsigned_or_inconsistent_survivor_lists_refused(run: Round) -> None:
    shared = run.share(run.advertise())
    client = run.clients["dev-0"]
    with pytest.raises(SecAggError, match="bad signature"):
        client.mask(np.zeros(LENGTH, dtype=np.uint32), replace(shared, signature=b"\0" * 64))
    with pytest.raises(SecAggError, match="outside the roster"):
        client.mask(
            np.zeros(LENGTH, dtype=np.uint32), run.sign(replace(shared, devices=[*shared.devices, "x"]))
        )
    with pytest.raises(SecAggError, match="expected a 'shared' notice"):
        client.mask(np.zeros(LENGTH, dtype=np.uint32), run.sign(replace(shared, phase=PHASE_MASKED)))
    survivors = run.mask(shared, list(run.clients))
    with pytest.raises(SecAggError, match="outside the roster"):
        client.on_survivors(run.sign(SurvivorList(FED, 1, PHASE_MASKED, [*survivors.devices[:-1], "dev-9"])))


def test_survivor_list_outside_the_shared_set_refused(run: Round) -> None:
    roster = run.advertise()
    for d, client in run.clients.items():
        bundles = client.on_roster(roster)
        if d != "dev-5":  # dev-5 never delivers its shares: not in U2
            for bundle in bundles:
                run.server.add_shares(bundle)
    shared = run.server.close_share_phase()
    assert "dev-5" not in shared.devices
    for d in shared.devices:
        for bundle in run.server.shares_for(d):
            run.clients[d].on_shares(bundle)
    survivors = run.mask(shared, shared.devices)
    with pytest.raises(SecAggError, match="not in the shared set"):
        run.clients["dev-0"].on_survivors(run.sign(replace(survivors, devices=[*survivors.devices, "dev-5"])))


def test_survivors_below_threshold_refused(run: Round) -> None:
    shared = run.share(run.advertise())
    survivors = run.mask(shared, list(run.clients))
    t = run.server.threshold
    few = run.sign(SurvivorList(FED, 1, PHASE_MASKED, survivors.devices[: t - 1]))
    with pytest.raises(SecAggError, match="below the threshold"):
        run.clients[few.devices[0]].on_survivors(few)


def test_server_abandons_below_threshold() -> None:
    run = Round()
    shared = run.share(run.advertise())
    with pytest.raises(RoundAbandoned):
        run.mask(shared, list(run.clients)[: run.server.threshold - 1])


def test_double_reveal_refused(run: Round) -> None:
    shared = run.share(run.advertise())
    survivors = run.mask(shared, list(run.clients))
    client = run.clients["dev-0"]
    first = client.on_survivors(survivors)
    assert "dev-1" in first.self_mask_shares
    assert client.on_survivors(survivors) == first  # a duplicate notice is answered identically
    lying = run.sign(SurvivorList(FED, 1, PHASE_MASKED, [d for d in survivors.devices if d != "dev-1"]))
    with pytest.raises(SecAggError, match="double reveal"):
        client.on_survivors(lying)


def test_server_refuses_reveal_of_wrong_kind(run: Round) -> None:
    shared = run.share(run.advertise())
    who = [d for d in run.clients if d != "dev-5"]
    survivors = run.mask(shared, who)
    reveal = run.clients["dev-0"].on_survivors(survivors)
    wrong = replace(
        reveal,
        self_mask_shares={**reveal.self_mask_shares, "dev-5": b"\0" * shamir.SHARE_BYTES},
        mask_key_shares={},
    )
    wrong = replace(wrong, signature=keys.sign(run.identities["dev-0"], wrong.signed_bytes()))
    with pytest.raises(SecAggError, match="wrong kind"):
        run.server.add_reveal(wrong)
    forged = replace(reveal, signature=b"\1" * 64)
    with pytest.raises(SecAggError, match="bad signature on reveal"):
        run.server.add_reveal(forged)


def test_forged_masked_input_refused(run: Round) -> None:
    shared = run.share(run.advertise())
    client = run.clients["dev-0"]
    y = client.mask(np.zeros(LENGTH, dtype=np.uint32), shared)
    message = client.masked_input(y.tobytes())
    with pytest.raises(SecAggError, match="bad signature on masked input"):
        run.server.add_masked(replace(message, payload=np.zeros(LENGTH, dtype=np.uint32).tobytes()))
    assert run.server.add_masked(message)
    assert not run.server.add_masked(message)  # duplicate counts once


def test_forwarded_bundle_refused(run: Round) -> None:
    roster = run.advertise()
    bundles = run.clients["dev-0"].on_roster(roster)
    for client in list(run.clients.values())[1:]:
        client.on_roster(roster)
    to_one = next(b for b in bundles if b.recipient == "dev-1")
    with pytest.raises(SecAggError, match="addressed to"):
        run.clients["dev-2"].on_shares(to_one)
    with pytest.raises(SecAggError, match="does not decrypt"):
        run.clients["dev-2"].on_shares(replace(to_one, recipient="dev-2"))


def test_replayed_messages_from_an_earlier_round_refused() -> None:
    first = Round(round_id=1)
    roster1 = first.advertise()
    old_bundles = first.clients["dev-0"].on_roster(roster1)
    shared1 = first.share(roster1)
    second = Round(round_id=2, identities=first.identities, aggregator=first.aggregator)
    second.clients = first.clients  # same devices, next round
    roster2 = second.advertise()
    client = second.clients["dev-1"]
    with pytest.raises(SecAggError, match="replayed from an earlier round"):
        client.on_roster(roster1)
    client.on_roster(roster2)
    to_one = next(b for b in old_bundles if b.recipient == "dev-1")
    with pytest.raises(SecAggError, match="replayed"):
        client.on_shares(to_one)
    with pytest.raises(SecAggError, match="replayed"):
        client.mask(np.zeros(LENGTH, dtype=np.uint32), shared1)
    with pytest.raises(SecAggError, match="not after round"):
        client.advertise(1)
    with pytest.raises(SecAggError, match="replayed or misrouted"):
        second.server.add_shares(to_one)


def test_corrupted_share_is_routed_around() -> None:
    """A survivor that reveals a bad share cannot spoil the sum while t good shares remain."""
    run = Round()
    shared = run.share(run.advertise())
    survivors = run.mask(shared, list(run.clients))
    reveals = [run.clients[d].on_survivors(survivors) for d in survivors.devices]
    bad = reveals[0]
    owner = next(iter(bad.self_mask_shares))
    tampered = replace(bad, self_mask_shares={**bad.self_mask_shares, owner: b"\7" * shamir.SHARE_BYTES})
    identity = run.identities[bad.device]
    run.server.add_reveal(replace(tampered, signature=keys.sign(identity, tampered.signed_bytes())))
    for reveal in reveals[1:]:
        run.server.add_reveal(reveal)
    total = run.server.unmask()
    np.testing.assert_array_equal(total, np.full(LENGTH, 3 * N, dtype=np.uint32))


def test_missing_reveals_abandon_the_round() -> None:
    run = Round()
    shared = run.share(run.advertise())
    survivors = run.mask(shared, list(run.clients))
    run.server.add_reveal(run.clients["dev-0"].on_survivors(survivors))
    assert run.server.missing_shares()
    with pytest.raises(RoundAbandoned):
        run.server.unmask()


def test_phase_notice_reused_as_other_phase_refused(run: Round) -> None:
    shared = run.share(run.advertise())
    assert shared.phase == PHASE_SHARED
    with pytest.raises(SecAggError, match="expected a 'masked' notice"):
        run.clients["dev-0"].on_survivors(shared)
