"""End-to-end encrypted share bundles (Bonawitz et al. CCS 2017 §4, round 1 "ShareKeys").

Device u sends neighbour v one bundle holding v's Shamir shares of u's self-mask seed and of u's mask
secret key. It travels through the broker and the aggregator, neither of which may read it, so it is
sealed with ``nacl.public.Box(u's round encryption key, v's round encryption public key)``
(X25519 + XSalsa20-Poly1305, authenticated).

The paper binds the plaintext to ``u || v`` so an aggregator cannot re-route a bundle (hand v the bundle
u made for w, or replay last round's) and learn from v's later reveals. Here the binding is the nonce:
``BLAKE2b(domain, federation, round, sender, recipient)``, which both ends derive, so it is neither sent
nor repeated in the plaintext. A bundle opened under any other federation, round, sender or recipient
uses another nonce and fails Poly1305 authentication, exactly like a forged one. The nonce never repeats
under one key pair: encryption keys are fresh every round, the round is in the nonce, and a device seals
one bundle per neighbour per round. The ciphertext is the two 33-byte shares plus the 16-byte tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public

from shared.errors import SecAggError
from shared.secagg.shamir import SHARE_BYTES

_DOMAIN = "fedmq/secagg/shares/v2"
_DIGEST_PERSON = b"fedmq.sa.dgst.v1"
#: Bytes of one share's digest; a bundle's digest is the self-mask share's then the mask-key share's.
SHARE_DIGEST_BYTES = 16
BUNDLE_DIGEST_BYTES = 2 * SHARE_DIGEST_BYTES
SELF_MASK_KIND = "self_mask"
MASK_KEY_KIND = "mask_key"
#: Bytes of a sealed bundle: both shares and the Poly1305 tag (the nonce is derived, not sent).
SEALED_BYTES = 2 * SHARE_BYTES + (
    nacl.bindings.crypto_box_ZEROBYTES - nacl.bindings.crypto_box_BOXZEROBYTES
)  # Poly1305: 16


@dataclass(frozen=True)
class ShareBundle:
    """What a recipient learns from one neighbour: its share of each of the two secrets."""

    sender: str
    self_mask_share: bytes
    mask_key_share: bytes


def share_digest(federation: str, round_id: int, owner: str, holder: str, kind: str, share: bytes) -> bytes:
    """The dealer's public commitment to one share it dealt (what makes a later reveal attributable).

    The dealer publishes, beside each sealed bundle, the digests of the two shares inside; the holder
    checks them when it opens the bundle (a mismatch is a bad bundle, never revealed) and the aggregator
    checks every revealed share against them. So a revealed share that differs from its digest was
    changed by its *revealer*, and shares that match their digests but do not lie on one polynomial were
    dealt inconsistently by the *dealer*. Hiding: a share of a degree ``t - 1 >= 1`` polynomial with
    random coefficients is a uniform 257-bit field element, so its 128-bit keyed digest reveals nothing
    usable; binding: changing a share unnoticed needs a second preimage of BLAKE2b-128.
    """
    binding = msgpack.packb([_DOMAIN, federation, round_id, owner, holder, kind], use_bin_type=True)
    return hashlib.blake2b(share, key=hashlib.blake2b(binding, digest_size=32).digest(),
                           digest_size=SHARE_DIGEST_BYTES, person=_DIGEST_PERSON).digest()  # fmt: skip


def bundle_digest(
    federation: str, round_id: int, owner: str, holder: str, self_mask_share: bytes, mask_key_share: bytes
) -> bytes:
    """Both shares' digests, as published next to the bundle ``owner`` sealed for ``holder``."""
    return share_digest(federation, round_id, owner, holder, SELF_MASK_KIND, self_mask_share) + share_digest(
        federation, round_id, owner, holder, MASK_KEY_KIND, mask_key_share
    )


def _nonce(federation: str, round_id: int, sender: str, recipient: str) -> bytes:
    binding = msgpack.packb([_DOMAIN, federation, round_id, sender, recipient], use_bin_type=True)
    return hashlib.blake2b(binding, digest_size=nacl.public.Box.NONCE_SIZE).digest()


def seal(
    sender_enc_sk: nacl.public.PrivateKey,
    recipient_enc_pk: bytes,
    federation: str,
    round_id: int,
    sender: str,
    recipient: str,
    *,
    self_mask_share: bytes,
    mask_key_share: bytes,
) -> bytes:
    """Encrypt one bundle for ``recipient`` under the nonce its binding derives."""
    if len(self_mask_share) != SHARE_BYTES or len(mask_key_share) != SHARE_BYTES:
        raise SecAggError(f"shares must be {SHARE_BYTES} bytes")
    try:
        box = nacl.public.Box(sender_enc_sk, nacl.public.PublicKey(recipient_enc_pk))
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError, TypeError) as exc:
        # libsodium refuses a low-order recipient key; keys are checked at the roster, this is the backstop
        raise SecAggError(f"cannot seal a bundle for {recipient!r}: {exc}") from exc
    nonce = _nonce(federation, round_id, sender, recipient)
    return bytes(box.encrypt(self_mask_share + mask_key_share, nonce).ciphertext)


def open_bundle(
    recipient_enc_sk: nacl.public.PrivateKey,
    sender_enc_pk: bytes,
    ciphertext: bytes,
    federation: str,
    round_id: int,
    sender: str,
    *,
    recipient: str,
) -> ShareBundle:
    """Decrypt under the expected binding; raise :class:`SecAggError` if it does not authenticate."""
    if len(ciphertext) != SEALED_BYTES:
        raise SecAggError(
            f"share bundle {sender!r} -> {recipient!r} has {len(ciphertext)} bytes, expected {SEALED_BYTES}"
        )
    try:
        box = nacl.public.Box(recipient_enc_sk, nacl.public.PublicKey(sender_enc_pk))
        plaintext = box.decrypt(ciphertext, _nonce(federation, round_id, sender, recipient))
    except (
        nacl.exceptions.CryptoError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
        nacl.exceptions.RuntimeError,
        RuntimeError,
        ValueError,
        TypeError,
    ) as exc:
        raise SecAggError(
            f"share bundle {sender!r} -> {recipient!r} does not decrypt under round {round_id} of "
            f"{federation!r} (forged, forwarded, replayed or corrupted)"
        ) from exc
    return ShareBundle(sender, plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:])
