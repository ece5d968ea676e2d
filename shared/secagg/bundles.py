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
    box = nacl.public.Box(sender_enc_sk, nacl.public.PublicKey(recipient_enc_pk))
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
        ValueError,
        TypeError,
    ) as exc:
        raise SecAggError(
            f"share bundle {sender!r} -> {recipient!r} does not decrypt under round {round_id} of "
            f"{federation!r} (forged, forwarded, replayed or corrupted)"
        ) from exc
    return ShareBundle(sender, plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:])
