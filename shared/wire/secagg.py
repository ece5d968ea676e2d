"""Wire messages of secure aggregation (SecAgg+, Bonawitz et al. CCS 2017 Fig. 4; Bell et al. CCS 2020).

One dataclass per protocol step. Every message that a party must be able to attribute carries an
Ed25519 signature over :meth:`signed_bytes`, a canonical msgpack list that starts with a domain string
and the message type, federation and round, so a signature can never be replayed into another message
kind, federation or round. Share bundles need no signature: NaCl Box authenticates them under keys the
signed roster fixes.

Light structural checks live in ``__post_init__`` (the codec turns their ``ValueError`` into a
``WireError``); protocol checks (who may send what, when) live in ``shared.secagg.client``/``server``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack

from shared.errors import InvalidValue
from shared.wire.base import Message, message

_DOMAIN = "fedmq/secagg/v1"
KEY_BYTES = 32
#: Bytes of one share digest (two per bundle: self-mask share, mask-key share).
DIGEST_BYTES = 16
SIGNATURE_BYTES = 64
PHASE_SHARED = "shared"  # U2: devices whose share bundles all arrived
PHASE_MASKED = "masked"  # U3: devices whose masked input arrived
_EMPTY_SIG = b"\0" * SIGNATURE_BYTES


def _canonical(*fields: object) -> bytes:
    packed: bytes = msgpack.packb([_DOMAIN, *fields], use_bin_type=True)
    return packed


def _check_round(round_id: int) -> None:
    if round_id < 0:
        raise InvalidValue(f"round must be >= 0, got {round_id}")


def _check_key(name: str, key: bytes, size: int = KEY_BYTES) -> None:
    if len(key) != size:
        raise InvalidValue(f"{name} must be {size} bytes, got {len(key)}")


def _check_roster_head(round_id: int, graph_seed: bytes, signature: bytes) -> None:
    """The checks on the round, graph seed and signature both roster forms carry (the full
    :class:`Roster` and the compact one, shared/wire/roster.py), so either form is refused alike."""
    _check_round(round_id)
    _check_key("graph_seed", graph_seed)
    _check_key("signature", signature, SIGNATURE_BYTES)


def _check_roster_parameters(degree: int, threshold: int, bits: int, length: int) -> None:
    """The round parameters both roster forms carry, refused alike in either (see
    :func:`_check_roster_head`)."""
    if not 1 <= bits <= 32:
        raise InvalidValue(f"bits must be in 1..32, got {bits}")
    if length < 0 or degree < 1 or not 1 <= threshold <= degree:
        raise InvalidValue(f"bad roster parameters degree={degree} threshold={threshold} length={length}")


@message("secagg.advertise_keys")
@dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Round 0: a device's fresh X25519 public keys and a commitment to its self-mask seed, signed."""

    federation: str
    round: int
    device: str
    enc_pk: bytes
    mask_pk: bytes
    self_mask_commitment: bytes
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("enc_pk", self.enc_pk)
        _check_key("mask_pk", self.mask_pk)
        _check_key("self_mask_commitment", self.self_mask_commitment)
        _check_key("signature", self.signature, SIGNATURE_BYTES)

    def signed_bytes(self) -> bytes:
        return _canonical(
            self.TYPE,
            self.federation,
            self.round,
            self.device,
            self.enc_pk,
            self.mask_pk,
            self.self_mask_commitment,
        )


@dataclass(frozen=True)
class RosterMember:
    """One member as the roster lists it, with the member's own advert signature (checked by peers)."""

    device: str
    enc_pk: bytes
    mask_pk: bytes
    self_mask_commitment: bytes
    signature: bytes

    def advert(self, federation: str, round_id: int) -> AdvertiseKeys:
        """The advert this entry claims to come from (so its signature can be checked)."""
        return AdvertiseKeys(
            federation,
            round_id,
            self.device,
            self.enc_pk,
            self.mask_pk,
            self.self_mask_commitment,
            self.signature,
        )


@message("secagg.roster")
@dataclass(frozen=True)
class Roster(Message):
    """Round 0 close: who is in, their keys, the public graph seed and the round's parameters.

    ``degree`` is the neighbour degree k and ``threshold`` the Shamir threshold t (the wire keys ``t``
    and ``v`` are reserved by the codec, hence the long names).

    Signed by the aggregator; each member entry also carries the member's own signature, so a roster
    with a swapped key is refused by every honest device.
    """

    federation: str
    round: int
    members: list[RosterMember]
    graph_seed: bytes
    degree: int
    threshold: int
    bits: int
    length: int
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_roster_head(self.round, self.graph_seed, self.signature)
        _check_roster_parameters(self.degree, self.threshold, self.bits, self.length)

    @property
    def member_ids(self) -> list[str]:
        """Every member's id (the same accessor as the compact roster's)."""
        return [m.device for m in self.members]

    def signed_bytes(self) -> bytes:
        rows = [[m.device, m.enc_pk, m.mask_pk, m.self_mask_commitment, m.signature] for m in self.members]
        return _canonical(
            self.TYPE,
            self.federation,
            self.round,
            rows,
            self.graph_seed,
            self.degree,
            self.threshold,
            self.bits,
            self.length,
        )


@message("secagg.encrypted_shares")
@dataclass(frozen=True)
class EncryptedShares(Message):
    """Round 1: one NaCl Box ciphertext from ``sender`` to its neighbour ``recipient``.

    The in-memory unit the SecAgg+ client and server exchange; on the wire bundles travel in a
    :class:`ShareBatch`, which names each bundle's federation, round and owner once.
    """

    federation: str
    round: int
    sender: str
    recipient: str
    ciphertext: bytes
    #: The dealer's digests of the two shares inside (``shared.secagg.bundles.bundle_digest``); empty
    #: from a client that predates them (its reveals then cannot be attributed as precisely).
    digest: bytes = b""

    def __post_init__(self) -> None:
        _check_round(self.round)
        if self.digest and len(self.digest) != 2 * DIGEST_BYTES:
            raise ValueError(f"bundle digest must be {2 * DIGEST_BYTES} bytes, got {len(self.digest)}")


@message("secagg.share_batch")
@dataclass(frozen=True)
class ShareBatch(Message):
    """All share bundles of one hop in one MQTT message, keyed by the peer.

    Device to aggregator (:meth:`outgoing`): ``device`` is the sender and ``ciphertexts`` maps each
    recipient to its bundle. Aggregator to a device's inbox (:meth:`inbox`): ``device`` is the recipient
    and the keys are the senders. Which hop a batch is comes from its topic. Federation, round and the
    two ids are not repeated per bundle: the bundle's nonce is derived from all four
    (``shared.secagg.bundles``), so a bundle moved to another round, federation or pair does not open.
    This cuts the share upload by about 40% (about 92 B per neighbour instead of 155).

    ``digests`` maps the same peers to the dealer's 32-byte digests of the two shares in each bundle
    (``shared.secagg.bundles.bundle_digest``): public commitments that make every later reveal
    attributable (docs/security.md, "Hostile devices"). Optional on the wire for older clients.
    """

    federation: str
    round: int
    device: str
    ciphertexts: dict[str, bytes] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    #: Upload only, optional: the dealer's signature over its digests (:func:`digests_signed_bytes`), which
    #: makes an inconsistency proof against it checkable by any device (shared/secagg/proofs.py).
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_round(self.round)
        if self.signature:
            _check_key("signature", self.signature, SIGNATURE_BYTES)
        if self.device in self.ciphertexts:
            raise InvalidValue(f"share batch of {self.device!r} carries a bundle to or from itself")
        if not set(self.digests) <= set(self.ciphertexts):
            raise InvalidValue("share batch has digests for peers without a bundle")
        if any(len(d) != 2 * DIGEST_BYTES for d in self.digests.values()):
            raise InvalidValue(f"share batch digests must be {2 * DIGEST_BYTES} bytes")

    @classmethod
    def outgoing(
        cls, federation: str, round_id: int, sender: str, bundles: list[EncryptedShares]
    ) -> ShareBatch:
        """The batch ``sender`` uploads: its bundles, one per neighbour."""
        owned = _owned(bundles, sender, "sender")
        return cls(
            federation,
            round_id,
            sender,
            {b.recipient: b.ciphertext for b in owned},
            {b.recipient: b.digest for b in owned if b.digest},
        )

    @classmethod
    def inbox(
        cls, federation: str, round_id: int, recipient: str, bundles: list[EncryptedShares]
    ) -> ShareBatch:
        """The batch the aggregator forwards to ``recipient``: the bundles its neighbours sealed for it."""
        owned = _owned(bundles, recipient, "recipient")
        return cls(
            federation,
            round_id,
            recipient,
            {b.sender: b.ciphertext for b in owned},
            {b.sender: b.digest for b in owned if b.digest},
        )

    def sent_bundles(self) -> list[EncryptedShares]:
        """Read as an upload: ``device`` sealed every bundle."""
        return [
            EncryptedShares(self.federation, self.round, self.device, to, c, self.digests.get(to, b""))
            for to, c in self.ciphertexts.items()
        ]

    def received_bundles(self) -> list[EncryptedShares]:
        """Read as an inbox: every bundle is for ``device``."""
        return [
            EncryptedShares(self.federation, self.round, frm, self.device, c, self.digests.get(frm, b""))
            for frm, c in self.ciphertexts.items()
        ]


def digests_signed_bytes(federation: str, round_id: int, dealer: str, digests: dict[str, bytes]) -> bytes:
    """What a dealer signs over the digests of the bundles it dealt (every neighbour, sorted by holder)."""
    return _canonical("secagg.share_digests", federation, round_id, dealer, sorted(digests.items()))


def _owned(bundles: list[EncryptedShares], device: str, role: str) -> list[EncryptedShares]:
    for bundle in bundles:
        if getattr(bundle, role) != device:
            link = f"{bundle.sender}->{bundle.recipient}"
            raise InvalidValue(f"bundle {link} does not have {device!r} as {role}")
    return bundles


@message("secagg.survivor_list")
@dataclass(frozen=True)
class SurvivorList(Message):
    """Phase notice, aggregator-signed: U2 (``phase="shared"``) or U3 (``phase="masked"``)."""

    federation: str
    round: int
    phase: str
    devices: list[str]
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("signature", self.signature, SIGNATURE_BYTES)
        if self.phase not in (PHASE_SHARED, PHASE_MASKED):
            raise InvalidValue(f"phase must be {PHASE_SHARED!r} or {PHASE_MASKED!r}, got {self.phase!r}")
        if len(set(self.devices)) != len(self.devices):
            raise InvalidValue("survivor list repeats a device")

    def signed_bytes(self) -> bytes:
        return _canonical(self.TYPE, self.federation, self.round, self.phase, sorted(self.devices))


@message("secagg.masked_input")
@dataclass(frozen=True)
class MaskedInput(Message):
    """Round 2: a device's masked vector in Z_{2^bits}, packed by the codec layer; device-signed."""

    federation: str
    round: int
    device: str
    payload: bytes
    bits: int
    length: int
    signature: bytes = _EMPTY_SIG
    #: Refusal report, optional: neighbours whose share bundles this device refused (secagg/exclusion.py).
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("signature", self.signature, SIGNATURE_BYTES)
        if not 1 <= self.bits <= 32 or self.length < 0:
            raise InvalidValue(f"bad bits={self.bits} or length={self.length}")
        if len(set(self.refused)) != len(self.refused) or self.device in self.refused:
            raise InvalidValue("refusal report repeats a device or names the sender")

    def signed_bytes(self) -> bytes:
        digest = hashlib.blake2b(self.payload, digest_size=32).digest()
        report = [sorted(self.refused)] if self.refused else []  # absent when empty: older signatures hold
        return _canonical(self.TYPE, self.federation, self.round, self.device, digest, self.bits, self.length,
                          *report)  # fmt: skip


@message("secagg.unmask_reveal")
@dataclass(frozen=True)
class UnmaskReveal(Message):
    """Round 3: shares of surviving neighbours' self-mask seeds and of dropped neighbours' mask keys.

    Keys of both maps are the owners' device ids; no id may appear in both (Bonawitz et al. §4 round 4).
    """

    federation: str
    round: int
    device: str
    self_mask_shares: dict[str, bytes] = field(default_factory=dict)
    mask_key_shares: dict[str, bytes] = field(default_factory=dict)
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("signature", self.signature, SIGNATURE_BYTES)
        both = set(self.self_mask_shares) & set(self.mask_key_shares)
        if both:
            raise InvalidValue(f"reveal carries both kinds of share for {sorted(both)}")

    def signed_bytes(self) -> bytes:
        return _canonical(
            self.TYPE,
            self.federation,
            self.round,
            self.device,
            sorted(self.self_mask_shares.items()),
            sorted(self.mask_key_shares.items()),
        )


__all__ = [
    "PHASE_MASKED",
    "PHASE_SHARED",
    "AdvertiseKeys",
    "EncryptedShares",
    "MaskedInput",
    "Roster",
    "RosterMember",
    "ShareBatch",
    "SurvivorList",
    "UnmaskReveal",
    "digests_signed_bytes",
]
