"""Wire messages of the compact SecAgg+ roster: O(k) keys per device instead of O(cohort).

The full :class:`~shared.wire.secagg.Roster` lists every member's keys and signature (about 230 B a
member) because each device recomputes the neighbour graph from all of them. The compact form keeps
what the graph needs -- every member's id and a 16-byte digest of its signed advert
(:func:`shared.secagg.roster.advert_digest`), about 27 B a member -- in one aggregator-signed,
retained :class:`CompactRoster`, and delivers the full signed adverts only to the devices that use
them: each device's :class:`NeighbourKeys` in its inbox holds exactly its k neighbours' adverts, each
checked against its own signature *and* its digest in the signed compact list
(docs/security.md, "Compact roster").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import InvalidValue
from shared.wire.base import Message, message
from shared.wire.secagg import (
    _EMPTY_SIG,
    DIGEST_BYTES,
    KEY_BYTES,
    SIGNATURE_BYTES,
    RosterMember,
    _canonical,
    _check_roster_head,
    _check_roster_parameters,
    _check_round,
)

#: Bytes of one member's advert digest in a compact roster.
ADVERT_DIGEST_BYTES = DIGEST_BYTES


@message("secagg.compact_roster")
@dataclass(frozen=True)
class CompactRoster(Message):
    """Round 0 close, compact: member ids (sorted, unique), their advert digests, the graph seed and the
    round's parameters, aggregator-signed. ``digests`` is the concatenation of one
    :data:`ADVERT_DIGEST_BYTES` digest per member, in ``devices`` order."""

    federation: str
    round: int
    devices: list[str]
    digests: bytes
    graph_seed: bytes
    degree: int
    threshold: int
    bits: int
    length: int
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_roster_head(self.round, self.graph_seed, self.signature)
        _check_roster_parameters(self.degree, self.threshold, self.bits, self.length)
        if len(self.digests) != ADVERT_DIGEST_BYTES * len(self.devices):
            raise InvalidValue(
                f"compact roster has {len(self.digests)} digest bytes for {len(self.devices)} members"
            )
        if any(a >= b for a, b in zip(self.devices, self.devices[1:], strict=False)):
            raise InvalidValue("compact roster members must be sorted and unique")

    @property
    def member_ids(self) -> list[str]:
        """Every member's id (the same accessor as :attr:`Roster.member_ids`)."""
        return list(self.devices)

    def digest_of(self, device: str, index: int) -> bytes:
        """The advert digest listed for ``devices[index]`` (``device``, checked)."""
        if self.devices[index] != device:
            raise InvalidValue(f"member {index} is {self.devices[index]!r}, not {device!r}")
        return self.digests[index * ADVERT_DIGEST_BYTES : (index + 1) * ADVERT_DIGEST_BYTES]

    def signed_bytes(self) -> bytes:
        return _canonical(
            self.TYPE,
            self.federation,
            self.round,
            self.devices,
            self.digests,
            self.graph_seed,
            self.degree,
            self.threshold,
            self.bits,
            self.length,
        )


#: Bytes of one neighbour's advert in :class:`NeighbourKeys`: enc pk, mask pk, commitment, signature.
NEIGHBOUR_ENTRY_BYTES = 3 * KEY_BYTES + SIGNATURE_BYTES


@message("secagg.neighbour_keys")
@dataclass(frozen=True)
class NeighbourKeys(Message):
    """The signed adverts of ``device``'s neighbours, sent to its inbox with the compact roster.

    ``members`` are the neighbours' ids and ``keys`` holds, per member in that order, its ``enc_pk``,
    ``mask_pk``, ``self_mask_commitment`` and advert ``signature`` (160 bytes): about 170 B a neighbour
    instead of the 230 B of a roster member's field map. Not aggregator-signed: each entry carries its
    owner's signature, and its digest is fixed by the signed :class:`CompactRoster`, so the aggregator can
    only withhold or swap entries, which the device notices (they must be exactly its graph neighbours).
    """

    federation: str
    round: int
    device: str
    members: list[str] = field(default_factory=list)
    keys: bytes = b""

    def __post_init__(self) -> None:
        _check_round(self.round)
        if len(self.keys) != NEIGHBOUR_ENTRY_BYTES * len(self.members):
            raise InvalidValue(f"{len(self.keys)} key bytes for {len(self.members)} neighbours")

    @classmethod
    def of(cls, federation: str, round_id: int, device: str, members: list[RosterMember]) -> NeighbourKeys:
        """Pack roster members' adverts for ``device``."""
        body = b"".join(m.enc_pk + m.mask_pk + m.self_mask_commitment + m.signature for m in members)
        return cls(federation, round_id, device, [m.device for m in members], body)

    def entries(self) -> list[RosterMember]:
        """The adverts as roster members (each one's signature is checked by the receiving device)."""
        out = []
        for i, device in enumerate(self.members):
            row = self.keys[i * NEIGHBOUR_ENTRY_BYTES : (i + 1) * NEIGHBOUR_ENTRY_BYTES]
            k = KEY_BYTES
            out.append(RosterMember(device, row[:k], row[k : 2 * k], row[2 * k : 3 * k], row[3 * k :]))
        return out


__all__ = ["ADVERT_DIGEST_BYTES", "NEIGHBOUR_ENTRY_BYTES", "CompactRoster", "NeighbourKeys"]
