"""End-to-end encrypted share bundles (Bonawitz et al. CCS 2017 §4, round 1 "ShareKeys").

Device u sends neighbour v one bundle holding v's Shamir shares of u's self-mask seed and of u's mask
secret key. It travels through the broker and the aggregator, neither of which may read it, so it is
sealed with ``nacl.public.Box(u's round encryption key, v's round encryption public key)``
(X25519 + XSalsa20-Poly1305, authenticated).

The plaintext repeats federation, round, sender and recipient, and the recipient checks them: the
paper's ``u || v || shares`` binding. Without it an aggregator could re-route a bundle (e.g. hand v the
bundle u made for w, or replay last round's) and learn from v's later reveals; with it any forwarded,
replayed or cross-round bundle is refused. (A forwarded bundle also fails to decrypt, because the Box
key depends on both ends; the binding is the second, explicit line.)
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.public

from shared.errors import SecAggError
from shared.secagg.shamir import SHARE_BYTES

_DOMAIN = "fedmq/secagg/shares/v1"


@dataclass(frozen=True)
class ShareBundle:
    """What a recipient learns from one neighbour: its share of each of the two secrets."""

    sender: str
    self_mask_share: bytes
    mask_key_share: bytes


def seal(
    sender_enc_sk: nacl.public.PrivateKey,
    recipient_enc_pk: bytes,
    federation: str,
    round_id: int,
    sender: str,
    recipient: str,
    self_mask_share: bytes,
    mask_key_share: bytes,
) -> bytes:
    """Encrypt one bundle for ``recipient`` (random 24-byte nonce, prepended)."""
    plaintext = msgpack.packb(
        [_DOMAIN, federation, round_id, sender, recipient, self_mask_share, mask_key_share],
        use_bin_type=True,
    )
    box = nacl.public.Box(sender_enc_sk, nacl.public.PublicKey(recipient_enc_pk))
    return bytes(box.encrypt(plaintext))


def open_bundle(
    recipient_enc_sk: nacl.public.PrivateKey,
    sender_enc_pk: bytes,
    ciphertext: bytes,
    federation: str,
    round_id: int,
    sender: str,
    recipient: str,
) -> ShareBundle:
    """Decrypt and check the binding; raise :class:`SecAggError` on any mismatch."""
    try:
        box = nacl.public.Box(recipient_enc_sk, nacl.public.PublicKey(sender_enc_pk))
        plaintext = box.decrypt(ciphertext)
    except (
        nacl.exceptions.CryptoError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
        ValueError,
        TypeError,
    ) as exc:
        raise SecAggError(f"share bundle {sender!r} -> {recipient!r} does not decrypt") from exc
    try:
        fields = msgpack.unpackb(plaintext, raw=False, max_bin_len=1024, max_str_len=1024, max_array_len=16)
    except Exception as exc:  # msgpack raises many types on garbage
        raise SecAggError(f"share bundle {sender!r} -> {recipient!r} is malformed") from exc
    if not isinstance(fields, list) or len(fields) != 7:
        raise SecAggError(f"share bundle {sender!r} -> {recipient!r} is malformed")
    domain, fed, rnd, from_id, to_id, b_share, key_share = fields
    if (domain, fed, rnd, from_id, to_id) != (_DOMAIN, federation, round_id, sender, recipient):
        raise SecAggError(
            f"share bundle binding mismatch: made for {fed!r}/{rnd!r} {from_id!r}->{to_id!r}, "
            f"received as {federation!r}/{round_id} {sender!r}->{recipient!r} (replayed or forwarded)"
        )
    for share in (b_share, key_share):
        if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
            raise SecAggError(f"share bundle {sender!r} -> {recipient!r} carries a malformed share")
    return ShareBundle(sender, b_share, key_share)
