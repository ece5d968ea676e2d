"""The compact roster (shared/secagg/roster.py): ids + advert digests for all, signed adverts for neighbours.

Real Ed25519/X25519 keys and a sparse graph (n = 50 > FULL_GRAPH_MAX_N, so k < n - 1): a device accepts
exactly its neighbours' genuine adverts under a seed it recomputes, and refuses every deviation an
aggregator could try (docs/security.md, "Compact roster").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import nacl.signing
import numpy as np
import pytest

from shared.errors import SecAggError, WireError
from shared.secagg import SecAggClient, SecAggServer, keys
from shared.secagg.graph import graph_seed, neighbour_graph, neighbours_of
from shared.secagg.keys import generate_identity
from shared.secagg.roster import RosterJoin, advert_digest, compact, neighbour_keys
from shared.wire import decode, encode
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import AdvertiseKeys, Roster, RosterMember, ShareBatch

FED, ROUND, N, BITS, LENGTH = "fed", 3, 50, 16, 8


@dataclass
class Setup:
    aggregator: nacl.signing.SigningKey
    identities: dict[str, nacl.signing.SigningKey]
    clients: dict[str, SecAggClient]
    server: SecAggServer
    roster: Roster
    listed: CompactRoster

    def slice_of(self, device: str) -> NeighbourKeys:
        return neighbour_keys(self.roster, self.server.graph[device], device)

    def resign(self, listed: CompactRoster) -> CompactRoster:
        return replace(listed, signature=keys.sign(self.aggregator, listed.signed_bytes()))

    def victim(self) -> tuple[str, SecAggClient]:
        device = self.roster.members[7].device
        return device, self.clients[device]


def setup(n: int = N) -> Setup:
    aggregator = generate_identity()
    identities = {f"dev-{i:03d}": generate_identity() for i in range(n)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    clients = {
        d: SecAggClient(FED, d, k, bytes(aggregator.verify_key), directory) for d, k in identities.items()
    }
    server = SecAggServer(FED, ROUND, aggregator, directory, BITS, LENGTH)
    for client in clients.values():
        server.add_advert(client.advertise(ROUND))
    roster = server.make_roster()
    return Setup(aggregator, identities, clients, server, roster, compact(roster, aggregator))


@pytest.fixture(scope="module")
def base() -> Setup:
    return setup()


def test_sparse_graph_and_one_device_neighbourhood_match_the_whole_graph(base: Setup) -> None:
    assert base.roster.degree < N - 1, "the test needs a sparse graph"
    graph = neighbour_graph(base.listed.devices, base.listed.degree, base.listed.graph_seed)
    assert graph == base.server.graph
    for device in base.listed.devices:
        assert (
            neighbours_of(base.listed.devices, base.listed.degree, base.listed.graph_seed, device)
            == graph[device]
        )


def test_compact_round_sums_exactly_and_matches_the_full_roster() -> None:
    """Every device takes the compact path; the unmasked sum is the inputs' sum bit for bit, and each
    device's bundles go to the same neighbours as from the full roster."""
    run = setup()
    server = run.server
    inputs = {
        d: np.arange(LENGTH, dtype=np.uint32) * (i + 1) % (1 << BITS) for i, d in enumerate(run.clients)
    }
    for device, client in run.clients.items():
        bundles = client.on_compact_roster(run.listed, run.slice_of(device))
        assert sorted(b.recipient for b in bundles) == list(server.graph[device])
        assert client.on_compact_roster(run.listed, run.slice_of(device)) == bundles  # QoS 1 duplicate
        for bundle in ShareBatch.outgoing(FED, ROUND, device, bundles).sent_bundles():
            server.add_shares(bundle)
    u2 = server.close_share_phase()
    for device, client in run.clients.items():
        for bundle in server.shares_for(device):
            client.on_shares(bundle)
        y = client.mask(inputs[device].copy(), u2)
        server.add_masked(client.masked_input(y.astype("<u4").tobytes()))
    u3 = server.close_masked_phase()
    for client in run.clients.values():
        server.add_reveal(client.on_survivors(u3))
    expected = np.sum([x.astype(np.uint64) for x in inputs.values()], axis=0) % (1 << BITS)
    assert np.array_equal(server.unmask(), expected.astype(np.uint32))


def test_bytes_are_dominated_by_the_neighbours(base: Setup) -> None:
    """About 25-30 B per member in the compact roster (ids like dev-007) and ~170 B per neighbour."""
    device, _ = base.victim()
    full, listed = len(encode(base.roster)), len(encode(base.listed))
    keys_bytes = len(encode(base.slice_of(device)))
    assert listed < 30 * N + 200 < full / 5
    assert keys_bytes < 175 * base.roster.degree + 100


def test_refuses_a_neighbour_advert_with_a_swapped_key() -> None:
    run = setup()
    device, client = run.victim()
    slice_ = run.slice_of(device)
    entries = slice_.entries()
    forged = replace(entries[0], enc_pk=keys.RoundKeys.generate().enc_pk)  # not the owner's signature
    bad = NeighbourKeys.of(FED, ROUND, device, [forged, *entries[1:]])
    with pytest.raises(SecAggError, match=r"bad signature on keys of.*swapped or forged"):
        client.on_compact_roster(run.listed, bad)


def test_refuses_a_genuinely_signed_advert_that_is_not_the_one_listed() -> None:
    """The owner signed it, but its digest is not the roster's: e.g. keys the device advertised and the
    aggregator chose not to list (an equivocation the signature alone would not catch)."""
    run = setup()
    device, client = run.victim()
    slice_ = run.slice_of(device)
    owner = slice_.members[0]
    fresh = keys.RoundKeys.generate()
    unsigned = AdvertiseKeys(FED, ROUND, owner, fresh.enc_pk, fresh.mask_pk, fresh.self_mask_commitment)
    other = replace(unsigned, signature=keys.sign(run.identities[owner], unsigned.signed_bytes()))
    member = RosterMember(owner, other.enc_pk, other.mask_pk, other.self_mask_commitment, other.signature)
    with pytest.raises(SecAggError, match=f"keys of '{owner}' do not match their digest"):
        client.on_compact_roster(
            run.listed, NeighbourKeys.of(FED, ROUND, device, [member, *slice_.entries()[1:]])
        )


def test_refuses_a_compact_roster_whose_seed_does_not_match() -> None:
    run = setup()
    device, client = run.victim()
    listed = run.resign(replace(run.listed, graph_seed=bytes(32)))  # aggregator-signed, yet not the hash
    with pytest.raises(SecAggError, match="graph seed does not match"):
        client.on_compact_roster(listed, run.slice_of(device))


def test_refuses_a_roster_with_a_substituted_digest() -> None:
    """Changing any member's digest changes the seed: the aggregator cannot keep the seed it ground."""
    run = setup()
    device, client = run.victim()
    far = next(d for d in run.listed.devices if d != device and d not in run.server.graph[device])
    i = run.listed.devices.index(far)
    digests = run.listed.digests[: 16 * i] + bytes(16) + run.listed.digests[16 * (i + 1) :]
    with pytest.raises(SecAggError, match="graph seed does not match"):
        client.on_compact_roster(run.resign(replace(run.listed, digests=digests)), run.slice_of(device))


@pytest.mark.parametrize("change", ["missing", "extra", "substituted", "repeated"])
def test_refuses_a_neighbour_list_that_is_not_the_graphs(change: str) -> None:
    run = setup()
    device, client = run.victim()
    slice_ = run.slice_of(device)
    outsider = next(
        m for m in run.roster.members if m.device != device and m.device not in run.server.graph[device]
    )
    entries = slice_.entries()
    members = {
        "missing": entries[1:],
        "extra": [*entries, outsider],
        "substituted": [outsider, *entries[1:]],
        "repeated": [entries[0], *entries[:-1]],
    }[change]
    with pytest.raises(SecAggError, match="not this device's neighbours in the graph"):
        client.on_compact_roster(run.listed, NeighbourKeys.of(FED, ROUND, device, members))


def test_refuses_own_digest_unenrolled_members_and_a_forged_signature() -> None:
    run = setup()
    device, client = run.victim()
    slice_ = run.slice_of(device)
    i = run.listed.devices.index(device)
    digests = run.listed.digests[: 16 * i] + bytes(16) + run.listed.digests[16 * (i + 1) :]
    with pytest.raises(SecAggError, match="own keys"):
        client.on_compact_roster(run.resign(replace(run.listed, digests=digests)), slice_)
    sybil = sorted([*run.listed.devices, "zz-sybil"])
    extended = run.resign(replace(run.listed, devices=sybil, digests=run.listed.digests + bytes(16)))
    with pytest.raises(SecAggError, match="unenrolled device 'zz-sybil'"):
        client.on_compact_roster(extended, slice_)
    with pytest.raises(SecAggError, match="bad signature on roster"):
        client.on_compact_roster(replace(run.listed, threshold=run.listed.threshold - 1), slice_)
    with pytest.raises(SecAggError, match="another round, federation or device"):
        client.on_compact_roster(
            run.listed, replace(slice_, device="dev-000" if device != "dev-000" else "dev-001")
        )
    # nothing was accepted: the genuine pair still works
    assert client.on_compact_roster(run.listed, slice_)


def test_a_weak_neighbour_key_is_refused_even_if_signed_and_listed() -> None:
    """Its owner signed a low-order key and the aggregator listed it (seed and all): its neighbours refuse."""
    run = setup()
    owner = run.listed.devices[11]
    unsigned = AdvertiseKeys(FED, ROUND, owner, bytes(32), keys.RoundKeys.generate().mask_pk, bytes(32))
    weak = replace(unsigned, signature=keys.sign(run.identities[owner], unsigned.signed_bytes()))
    i = run.listed.devices.index(owner)
    digests = run.listed.digests[: 16 * i] + advert_digest(weak) + run.listed.digests[16 * (i + 1) :]
    pairs = [(d, digests[16 * j : 16 * (j + 1)]) for j, d in enumerate(run.listed.devices)]
    seed = graph_seed(FED, ROUND, pairs)
    listed = run.resign(replace(run.listed, digests=digests, graph_seed=seed))
    victim = neighbours_of(listed.devices, listed.degree, seed, owner)[0]
    by_id = {m.device: m for m in run.roster.members}
    by_id[owner] = RosterMember(owner, weak.enc_pk, weak.mask_pk, weak.self_mask_commitment, weak.signature)
    neighbours = neighbours_of(listed.devices, listed.degree, seed, victim)
    slice_ = NeighbourKeys.of(FED, ROUND, victim, [by_id[v] for v in neighbours])
    with pytest.raises(SecAggError, match=f"encryption key of '{owner}'.*low-order"):
        run.clients[victim].on_compact_roster(listed, slice_)


def test_join_waits_for_both_pieces_in_either_order(base: Setup) -> None:
    device, _ = base.victim()
    slice_ = base.slice_of(device)
    first = RosterJoin()
    assert first.add(base.listed, ROUND) is None
    assert first.add(slice_, ROUND) == (base.listed, slice_)
    second = RosterJoin()
    assert second.add(slice_, ROUND + 1) is None  # another round: dropped
    assert second.add(slice_, ROUND) is None
    assert second.add(base.listed, ROUND) == (base.listed, slice_)


def test_wire_round_trip_and_malformed_compact_rosters(base: Setup) -> None:
    assert decode(encode(base.listed), CompactRoster) == base.listed
    device, _ = base.victim()
    assert decode(encode(base.slice_of(device)), NeighbourKeys) == base.slice_of(device)
    with pytest.raises(ValueError, match="sorted and unique"):
        replace(base.listed, devices=list(reversed(base.listed.devices)))
    with pytest.raises(ValueError, match="digest bytes"):
        replace(base.listed, digests=base.listed.digests[:-1])
    with pytest.raises(ValueError, match="key bytes"):
        replace(base.slice_of(device), keys=base.slice_of(device).keys[:-1])
    body = encode(base.listed).replace(base.listed.devices[0].encode(), b"zzz-000", 1)
    with pytest.raises(WireError):
        decode(body, CompactRoster)
