"""Identities, per-round key pairs and key agreement for secure aggregation.

Why each key exists (Bonawitz et al., CCS 2017, §4 "Practical Secure Aggregation", Fig. 4 round 0):

* an **Ed25519 identity** per device and for the aggregator (``nacl.signing``): it signs every
  advertised key pair and every aggregator notice, which is what turns the semi-honest protocol into
  the "active adversary" variant (§6.2 / Fig. 4 "with signatures"): a broker or aggregator that swaps a
  public key, forges a roster or a survivor list, is caught;
* a fresh **X25519 encryption pair** per round (``c`` keys in the paper): share bundles are sealed to
  it with ``nacl.public.Box`` so only the intended neighbour can read them;
* a fresh **X25519 mask pair** per round (``s`` keys): two neighbours agree on a pairwise mask seed
  ``s_uv`` without ever talking to each other;
* a fresh 32-byte **self-mask seed** ``b_u``: it hides ``u``'s input even when the pairwise masks are
  removed because a neighbour dropped out (§4, "double masking").

Fresh keys per round mean that nothing revealed in round r (e.g. a dropped device's mask key) helps in
round r+1, and that a bundle or reveal replayed from an earlier round cannot decrypt or verify.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from shared.errors import SecAggError

log = logging.getLogger(__name__)

#: Every secret in the protocol (self-mask seed, X25519 secret key, pairwise seed) is this long.
SEED_BYTES = 32
_PAIR_PERSON = b"fedmq.sa.pair.v1"  # BLAKE2b personalisation: at most 16 bytes
_COMMIT_PERSON = b"fedmq.sa.cmt.v1"


def generate_identity() -> nacl.signing.SigningKey:
    """A new long-term Ed25519 identity (enrolled with the federation out of band)."""
    return nacl.signing.SigningKey.generate()


def self_mask_seed() -> bytes:
    """A fresh uniformly random self-mask seed ``b_u`` (Bonawitz et al. §4)."""
    return nacl.utils.random(SEED_BYTES)


def commit_self_mask(seed: bytes) -> bytes:
    """Hiding, binding commitment to ``b_u`` carried in the advert.

    ``b_u`` is 256 bits of fresh randomness, so a keyed hash of it reveals nothing; after
    reconstruction the aggregator compares against it and can tell a corrupted Shamir share from a
    good one (and try another subset) instead of silently unmasking garbage.
    """
    return hashlib.blake2b(seed, digest_size=32, person=_COMMIT_PERSON).digest()


@dataclass(frozen=True)
class RoundKeys:
    """One device's key material for one round (never reused across rounds)."""

    enc_sk: nacl.public.PrivateKey
    mask_sk: bytes
    self_mask: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(
            enc_sk=nacl.public.PrivateKey.generate(),
            mask_sk=nacl.utils.random(SEED_BYTES),
            self_mask=self_mask_seed(),
        )

    @property
    def enc_pk(self) -> bytes:
        return bytes(self.enc_sk.public_key)

    @property
    def mask_pk(self) -> bytes:
        return mask_public_key(self.mask_sk)

    @property
    def self_mask_commitment(self) -> bytes:
        return commit_self_mask(self.self_mask)


#: Any clamped X25519 scalar is a multiple of the cofactor 8, so multiplying a point by it yields the
#: all-zero output exactly when the point has small order (libsodium then refuses the product).
_PROBE_SCALAR = bytes([9]) * 32


def check_public_key(public_key: bytes, what: str) -> None:
    """Refuse an X25519 public key that no honest device could have made.

    An all-zero or other low-order point (there are eight, plus their non-canonical encodings) makes
    every Diffie-Hellman with it produce the all-zero secret: a pairwise mask seed an eavesdropper
    knows, or a Box that libsodium refuses to build (a ``RuntimeError`` deep inside an honest peer).
    So both the aggregator (at the advert) and every device (at the roster) check each key once,
    before any key agreement, and the offender is named instead of honest peers failing later.
    """
    if len(public_key) != SEED_BYTES:
        raise SecAggError(f"{what} must be {SEED_BYTES} bytes, got {len(public_key)}")
    try:
        product = nacl.bindings.crypto_scalarmult(_PROBE_SCALAR, public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError, RuntimeError, ValueError) as exc:
        raise SecAggError(f"{what} is a low-order (weak) X25519 point") from exc
    if not any(product):
        raise SecAggError(f"{what} is a low-order (weak) X25519 point")


def mask_public_key(mask_sk: bytes) -> bytes:
    """X25519 public key of a mask secret key (used to check a reconstructed key, §4 round 4)."""
    return nacl.bindings.crypto_scalarmult_base(mask_sk)


def pair_seed(mask_sk: bytes, peer_mask_pk: bytes, federation: str, round_id: int, a: str, b: str) -> bytes:
    """Pairwise mask seed ``s_uv`` shared by devices ``a`` and ``b``.

    ``s_uv = BLAKE2b(key=X25519(sk_u, pk_v), msg=(federation, round, min(a,b), max(a,b)))``.
    Hashing the raw Diffie-Hellman output is the KA.agree step of Bonawitz et al. §4 (the paper hashes it
    too); binding federation, round and the ordered pair means a seed from another round or pair never
    coincides with this one, even if keys were (wrongly) reused. Symmetric in ``a``/``b``.
    """
    if a == b:
        raise SecAggError(f"device {a!r} cannot derive a pairwise seed with itself")
    try:
        shared = nacl.bindings.crypto_scalarmult(mask_sk, peer_mask_pk)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError, ValueError) as exc:
        # libsodium refuses low-order points (all-zero shared secret): a malicious key.
        raise SecAggError(f"key agreement between {a!r} and {b!r} failed: {exc}") from exc
    low, high = (a, b) if a < b else (b, a)
    context = msgpack.packb(["pair", federation, round_id, low, high], use_bin_type=True)
    return hashlib.blake2b(context, key=shared, digest_size=SEED_BYTES, person=_PAIR_PERSON).digest()


def sign(identity: nacl.signing.SigningKey, payload: bytes) -> bytes:
    """Detached Ed25519 signature of ``payload`` (a message's canonical ``signed_bytes``)."""
    return identity.sign(payload).signature


def verify(verify_key: bytes, payload: bytes, signature: bytes, what: str) -> None:
    """Check a detached signature; raise :class:`SecAggError` naming ``what`` when it does not hold."""
    try:
        nacl.signing.VerifyKey(verify_key).verify(payload, signature)
    except (
        nacl.exceptions.BadSignatureError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
        ValueError,
        TypeError,
    ) as exc:
        raise SecAggError(f"bad signature on {what}") from exc
