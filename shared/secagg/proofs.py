"""Inconsistency proofs: evidence any device can check that a dealer's self-mask shares are not a sharing
of the seed it committed to, so its neighbours may reveal the pair seeds they masked with it.

A proof is t self-mask shares of the dealer, each matching the 16-byte digest the dealer published for
that holder's bundle, with the dealer's Ed25519 signature over its whole digest map
(:func:`shared.wire.secagg.digests_signed_bytes`), whose Lagrange interpolation at zero does not open the
self-mask commitment of the dealer's signed advert. An honest dealer's shares all lie on one polynomial
of degree t - 1 whose constant is the committed seed, so *any* t of them interpolate to it: a proof
against an honest dealer needs a second preimage of a digest (BLAKE2b-128) or a forged signature. The
x-coordinate of a share is its holder's position (plus one) in the sorted signed map, which is where the
dealer itself placed it, and the commitment travels with the dealer's advert signature (checked against
the two keys the verifier already holds for it), so neither the graph nor the roster is needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import nacl.signing

from shared.errors import SecAggError
from shared.secagg import bundles, keys, shamir
from shared.wire.secagg import AdvertiseKeys, digests_signed_bytes
from shared.wire.seeds import InconsistencyProof

#: t-subsets of the revealed shares tried when building a proof (any one fails for a bad dealer).
MAX_PROOF_TRIES = 64


def sign_digests(
    identity: nacl.signing.SigningKey, federation: str, round_id: int, dealer: str, digests: dict[str, bytes]
) -> bytes:
    """The dealer's signature over the digests it publishes with its share batch."""
    return keys.sign(identity, digests_signed_bytes(federation, round_id, dealer, digests))


def disproves(proof: InconsistencyProof, *, threshold: int) -> bool:
    """Whether the proof's shares (already digest-checked) fail to rebuild its commitment."""
    holders = sorted(proof.digests)
    points = {holders.index(h) + 1: share for h, share in proof.shares.items()}
    try:
        secret = shamir.reconstruct(points, threshold)
    except SecAggError:  # not a field element or not a 32-byte value: no honest dealing gives that
        return True
    return keys.commit_self_mask(secret) != proof.commitment


def verify_proof(
    proof: InconsistencyProof,
    *,
    federation: str,
    round_id: int,
    identity: bytes,
    dealer_keys: tuple[bytes, bytes],
    threshold: int,
) -> None:
    """Raise :class:`SecAggError` unless ``proof`` shows its dealer dealt inconsistently.

    ``identity`` is the dealer's enrolled verify key and ``dealer_keys`` its (enc_pk, mask_pk) in this round,
    both from the device's own directory and roster, never from the proof.
    """
    dealer = proof.dealer
    advert = AdvertiseKeys(federation, round_id, dealer, *dealer_keys, proof.commitment)
    keys.verify(identity, advert.signed_bytes(), proof.advert_signature, f"advert of {dealer!r}")
    signed = digests_signed_bytes(federation, round_id, dealer, proof.digests)
    keys.verify(identity, signed, proof.digest_signature, f"digests of {dealer!r}")
    if len(proof.shares) != threshold:
        raise SecAggError(f"proof against {dealer!r} has {len(proof.shares)} shares, needs {threshold}")
    half = bundles.SHARE_DIGEST_BYTES
    for holder, share in proof.shares.items():
        digest = bundles.share_digest(federation, round_id, dealer, holder, bundles.SELF_MASK_KIND, share)
        if proof.digests.get(holder, b"")[:half] != digest:
            raise SecAggError(f"proof against {dealer!r}: the share of {holder!r} is not the one it dealt")
    if not disproves(proof, threshold=threshold):
        raise SecAggError(f"proof against {dealer!r} is forged: its shares rebuild the committed seed")


def make_proof(
    dealer: str,
    shares: Mapping[str, bytes],
    *,
    signed: tuple[dict[str, bytes], bytes] | None,
    advert: AdvertiseKeys,
    threshold: int,
) -> InconsistencyProof | None:
    """A proof from revealed, digest-checked shares (holder -> share), or None when none can be made
    (no signed digests, fewer than t attested shares, or every tried t-subset opens the commitment)."""
    if signed is None:
        return None
    digests, signature = signed
    federation, round_id = advert.federation, advert.round
    half = bundles.SHARE_DIGEST_BYTES
    attested = {
        h: s
        for h, s in shares.items()
        if h in digests
        and digests[h][:half]
        == bundles.share_digest(federation, round_id, dealer, h, bundles.SELF_MASK_KIND, s)
    }
    for subset in itertools.islice(itertools.combinations(sorted(attested), threshold), MAX_PROOF_TRIES):
        proof = InconsistencyProof(dealer, dict(digests), signature, {h: attested[h] for h in subset},
                                   advert.self_mask_commitment, advert.signature)  # fmt: skip
        if disproves(proof, threshold=threshold):
            return proof
    return None
