"""The compact roster: a device's roster traffic is O(k) keys plus ~27 B per member, not ~230 B per member.

The graph seed (:func:`shared.secagg.graph.graph_seed`) hashes every member's id and the 16-byte digest of
its signed advert (:func:`advert_digest`). The aggregator publishes one signed :class:`CompactRoster`
(ids + digests + seed + parameters, retained) and sends each device a :class:`NeighbourKeys` holding the
signed adverts of exactly its neighbours. A device (:func:`check_compact`):

1. checks the aggregator's signature, that every member is enrolled, that its own digest is its advert's;
2. recomputes the seed from the listed (id, digest) pairs and its own neighbours on the seeded ring;
3. requires the delivered adverts to be *exactly* those neighbours, each signed by its enrolled owner,
   with the digest the signed list gives it, and with no low-order key.

So it sees the whole ring (an aggregator cannot drop the honest devices around a victim without changing
the seed, as with the full roster) and verifies every key it will use. What it no longer verifies is that
a non-neighbour's digest belongs to a real advert; docs/security.md ("Compact roster") argues why that
gives an aggregator nothing it did not have: a listed digest nobody signed can sit only where no honest
device proceeds next to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import nacl.signing

from shared.errors import SecAggError
from shared.secagg import keys
from shared.secagg.graph import graph_seed, neighbour_graph, neighbours_of
from shared.wire.roster import ADVERT_DIGEST_BYTES, CompactRoster, NeighbourKeys
from shared.wire.secagg import AdvertiseKeys, Roster, RosterMember

_ADVERT_PERSON = b"fedmq.sa.advd1"

Peers = dict[str, tuple[bytes, bytes]]  # neighbour id -> (enc pk, mask pk)


def advert_digest(advert: AdvertiseKeys) -> bytes:
    """16-byte digest of a signed advert (its signed bytes and signature): what the compact roster lists."""
    body = advert.signed_bytes() + advert.signature
    return hashlib.blake2b(body, digest_size=ADVERT_DIGEST_BYTES, person=_ADVERT_PERSON).digest()


def member_digest(member: RosterMember, federation: str, round_id: int) -> bytes:
    """:func:`advert_digest` of the advert a full roster entry claims to be."""
    return advert_digest(member.advert(federation, round_id))


def members_of(adverts: Iterable[AdvertiseKeys]) -> list[RosterMember]:
    """Full-roster entries of signed adverts, sorted by device id."""
    ordered = sorted(adverts, key=lambda a: a.device)
    return [RosterMember(a.device, a.enc_pk, a.mask_pk, a.self_mask_commitment, a.signature) for a in ordered]


def members_seed(federation: str, round_id: int, members: list[RosterMember]) -> bytes:
    """The graph seed of a full roster's members (over their ids and advert digests)."""
    pairs = [(m.device, member_digest(m, federation, round_id)) for m in members]
    return graph_seed(federation, round_id, pairs)


def check_full(
    roster: Roster, *, device: str, own: AdvertiseKeys, aggregator_key: bytes, directory: Mapping[str, bytes]
) -> tuple[tuple[str, ...], Peers]:
    """Verify a full roster -- the aggregator's signature and *every* member's advert -- and return
    (this device's neighbours, their keys). Raises :class:`SecAggError` naming the rule broken."""
    keys.verify(aggregator_key, roster.signed_bytes(), roster.signature, "roster")
    peers: Peers = {}
    for member in roster.members:
        identity = directory.get(member.device)
        if identity is None:
            raise SecAggError(f"roster lists unenrolled device {member.device!r}")
        if member.device in peers:
            raise SecAggError(f"roster lists {member.device!r} twice")
        advert = member.advert(roster.federation, roster.round)
        keys.verify(identity, advert.signed_bytes(), member.signature,
                    f"keys of {member.device!r} (swapped or forged key)")  # fmt: skip
        # a low-order key would make a known pair seed or an unbuildable Box
        keys.check_public_key(member.enc_pk, f"encryption key of {member.device!r}")
        keys.check_public_key(member.mask_pk, f"mask key of {member.device!r}")
        peers[member.device] = (member.enc_pk, member.mask_pk)
    if peers.get(device) != (own.enc_pk, own.mask_pk):
        raise SecAggError("roster does not carry this device's own keys")
    if roster.graph_seed != members_seed(roster.federation, roster.round, roster.members):
        raise SecAggError("graph seed does not match the roster")
    graph = neighbour_graph(list(peers), roster.degree, roster.graph_seed)
    return graph[device], {v: peers[v] for v in graph[device]}


def compact(roster: Roster, identity: nacl.signing.SigningKey) -> CompactRoster:
    """The aggregator's compact form of its full roster, signed; the same seed and parameters."""
    members = sorted(roster.members, key=lambda m: m.device)
    unsigned = CompactRoster(
        roster.federation,
        roster.round,
        [m.device for m in members],
        b"".join(member_digest(m, roster.federation, roster.round) for m in members),
        roster.graph_seed,
        roster.degree,
        roster.threshold,
        roster.bits,
        roster.length,
    )
    return replace(unsigned, signature=keys.sign(identity, unsigned.signed_bytes()))


def neighbour_keys(roster: Roster, neighbours: tuple[str, ...], device: str) -> NeighbourKeys:
    """The signed adverts of ``device``'s neighbours, for its inbox."""
    by_id = {m.device: m for m in roster.members}
    return NeighbourKeys.of(roster.federation, roster.round, device, [by_id[v] for v in neighbours])


def check_compact(
    roster: CompactRoster,
    slice_: NeighbourKeys,
    *,
    device: str,
    own: AdvertiseKeys,
    aggregator_key: bytes,
    directory: Mapping[str, bytes],
) -> tuple[tuple[str, ...], Peers]:
    """Verify a compact roster and ``device``'s neighbour adverts; return (neighbours, their keys).

    Raises :class:`SecAggError` naming the rule broken; the caller logs it with round and device.
    """
    keys.verify(aggregator_key, roster.signed_bytes(), roster.signature, "roster")
    if (slice_.federation, slice_.round, slice_.device) != (roster.federation, roster.round, device):
        raise SecAggError("neighbour keys are for another round, federation or device")
    index = {d: i for i, d in enumerate(roster.devices)}
    unenrolled = [d for d in roster.devices if d not in directory]
    if unenrolled:
        raise SecAggError(f"roster lists unenrolled device {unenrolled[0]!r}")
    if device not in index or roster.digest_of(device, index[device]) != advert_digest(own):
        raise SecAggError("roster does not carry this device's own keys")
    pairs = [(d, roster.digest_of(d, i)) for i, d in enumerate(roster.devices)]
    if roster.graph_seed != graph_seed(roster.federation, roster.round, pairs):
        raise SecAggError("graph seed does not match the roster")
    neighbours = neighbours_of(roster.devices, roster.degree, roster.graph_seed, device)
    delivered = list(slice_.members)
    if sorted(delivered) != list(neighbours) or len(set(delivered)) != len(delivered):
        raise SecAggError(
            f"neighbour keys list {sorted(delivered)[:5]}..., not this device's neighbours in the graph"
        )
    peers: Peers = {}
    for member in slice_.entries():
        advert = member.advert(roster.federation, roster.round)
        keys.verify(directory[member.device], advert.signed_bytes(), member.signature,
                    f"keys of {member.device!r} (swapped or forged key)")  # fmt: skip
        if advert_digest(advert) != roster.digest_of(member.device, index[member.device]):
            raise SecAggError(f"keys of {member.device!r} do not match their digest in the roster")
        keys.check_public_key(member.enc_pk, f"encryption key of {member.device!r}")
        keys.check_public_key(member.mask_pk, f"mask key of {member.device!r}")
        peers[member.device] = (member.enc_pk, member.mask_pk)
    return neighbours, peers


@dataclass(frozen=True)
class RosterCheck:
    """What a device checks a roster against: its id, its own signed advert, the aggregator's and the
    enrolled devices' verify keys. Calling it verifies a full roster, or a compact one with this device's
    neighbour keys, and returns (neighbours, their keys)."""

    device: str
    own: AdvertiseKeys
    aggregator_key: bytes
    directory: Mapping[str, bytes]

    def __call__(
        self, roster: Roster | CompactRoster, slice_: NeighbourKeys | None
    ) -> tuple[tuple[str, ...], Peers]:
        if isinstance(roster, Roster):
            return check_full(
                roster, device=self.device, own=self.own, aggregator_key=self.aggregator_key,
                directory=self.directory,
            )  # fmt: skip
        if slice_ is None:
            raise SecAggError("a compact roster needs this device's neighbour keys")
        return check_compact(
            roster, slice_, device=self.device, own=self.own, aggregator_key=self.aggregator_key,
            directory=self.directory,
        )  # fmt: skip


class RosterJoin:
    """Holds whichever of a round's compact roster and neighbour keys came first, until both are here.

    They travel on different topics (the retained roster, the device's inbox), so either may arrive
    first; a piece of another round is dropped when this device moves on.
    """

    def __init__(self) -> None:
        self.roster: CompactRoster | None = None
        self.slice: NeighbourKeys | None = None

    def add(
        self, piece: CompactRoster | NeighbourKeys, round_id: int
    ) -> tuple[CompactRoster, NeighbourKeys] | None:
        """Keep ``piece`` if it is for ``round_id``; return both once both are here."""
        if piece.round != round_id:
            return None
        if isinstance(piece, CompactRoster):
            self.roster = self.roster or piece
        else:
            self.slice = self.slice or piece
        if self.roster is not None and self.slice is not None:
            return self.roster, self.slice
        return None
