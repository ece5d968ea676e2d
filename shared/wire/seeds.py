"""Wire messages of the pair-seed step that lets a SecAgg+ round close without a dealer nobody can rebuild.

After the unmask reveals, the aggregator may be left with dealers whose secrets cannot be rebuilt: a
device excluded at the masked close because fewer than t neighbours could open its bundles, a survivor
that dealt shares inconsistent with its commitment, a dropped device whose mask key does not rebuild.
It then removes such a dealer's own input from the sum and asks its surviving neighbours, in one signed
:class:`SeedRequest`, for the pair seeds they masked with it; each answers with a signed
:class:`SeedReveal`. For a dealer that honest neighbours saw survive (and so revealed a share of its
self mask), the request must carry an :class:`InconsistencyProof` that devices check before answering
(docs/security.md, "Hostile devices"; docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import InvalidValue
from shared.wire.base import Message, message
from shared.wire.secagg import DIGEST_BYTES, KEY_BYTES, SIGNATURE_BYTES, _canonical, _check_key, _check_round

_EMPTY_SIG = b"\0" * SIGNATURE_BYTES
#: Bytes of one Shamir share on the wire (shared/secagg/shamir.py).
SHARE_BYTES = 33


@dataclass(frozen=True)
class InconsistencyProof:
    """t self-mask shares of ``dealer`` that match the digests it signed yet do not rebuild its commitment.

    ``digests`` is the dealer's whole signed digest map (holder -> 32-byte bundle digest) and
    ``digest_signature`` its signature over it; a share's x-coordinate is its holder's position (plus one)
    in the sorted map, exactly where the dealer placed it. ``commitment`` and ``advert_signature`` are the
    self-mask commitment and signature of the dealer's advert (whose two keys the verifier holds), so a
    proof is checked without the roster.
    """

    dealer: str
    digests: dict[str, bytes]
    digest_signature: bytes
    shares: dict[str, bytes]
    commitment: bytes
    advert_signature: bytes

    def __post_init__(self) -> None:
        _check_key("digest_signature", self.digest_signature, SIGNATURE_BYTES)
        _check_key("advert_signature", self.advert_signature, SIGNATURE_BYTES)
        _check_key("commitment", self.commitment)
        if any(len(d) != 2 * DIGEST_BYTES for d in self.digests.values()):
            raise InvalidValue(f"proof digests must be {2 * DIGEST_BYTES} bytes")
        if any(len(s) != SHARE_BYTES for s in self.shares.values()):
            raise InvalidValue(f"proof shares must be {SHARE_BYTES} bytes")
        if not self.shares or not set(self.shares) <= set(self.digests):
            raise InvalidValue("proof shares must be of holders the dealer signed digests for")


@message("secagg.seed_request")
@dataclass(frozen=True)
class SeedRequest(Message):
    """Aggregator-signed: reveal the pair seeds you masked with these dealers (their inputs are out)."""

    federation: str
    round: int
    dealers: list[str]
    proofs: list[InconsistencyProof] = field(default_factory=list)
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("signature", self.signature, SIGNATURE_BYTES)
        if not self.dealers or len(set(self.dealers)) != len(self.dealers):
            raise InvalidValue("seed request must name distinct dealers")
        proven = [p.dealer for p in self.proofs]
        if len(set(proven)) != len(proven) or not set(proven) <= set(self.dealers):
            raise InvalidValue("seed request proofs must be for distinct requested dealers")

    def proof_for(self, dealer: str) -> InconsistencyProof | None:
        return next((p for p in self.proofs if p.dealer == dealer), None)

    def signed_bytes(self) -> bytes:
        proofs = [
            [p.dealer, sorted(p.digests.items()), p.digest_signature, sorted(p.shares.items()), p.commitment,
             p.advert_signature]
            for p in sorted(self.proofs, key=lambda p: p.dealer)
        ]
        return _canonical(self.TYPE, self.federation, self.round, sorted(self.dealers), proofs)


@message("secagg.seed_reveal")
@dataclass(frozen=True)
class SeedReveal(Message):
    """Device-signed answer to a :class:`SeedRequest`: dealer -> the 32-byte pair seed masked with it."""

    federation: str
    round: int
    device: str
    seeds: dict[str, bytes] = field(default_factory=dict)
    signature: bytes = _EMPTY_SIG

    def __post_init__(self) -> None:
        _check_round(self.round)
        _check_key("signature", self.signature, SIGNATURE_BYTES)
        if any(len(s) != KEY_BYTES for s in self.seeds.values()):
            raise InvalidValue(f"pair seeds must be {KEY_BYTES} bytes")
        if self.device in self.seeds:
            raise InvalidValue("a device has no pair seed with itself")

    def signed_bytes(self) -> bytes:
        return _canonical(self.TYPE, self.federation, self.round, self.device, sorted(self.seeds.items()))


__all__ = ["InconsistencyProof", "SeedRequest", "SeedReveal"]
