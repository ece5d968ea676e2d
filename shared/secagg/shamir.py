"""t-out-of-k Shamir secret sharing of 32-byte secrets over GF(2^256 + 297).

Used exactly as in Bonawitz et al. CCS 2017 §3 ("Secret sharing") and §4 rounds 1 and 4: each device
shares its self-mask seed ``b_u`` and its mask secret key with its neighbours; any ``t`` shares rebuild
a secret, ``t - 1`` reveal nothing about it (information-theoretically).

Why this field: p = 2^256 + 297 is the smallest prime above 2^256, so every 32-byte secret is a field
element without splitting and a share fits in 33 bytes (the smallest a 256-bit secret allows; a share
is sent to every neighbour and revealed again at unmasking, so its size is most of SecAgg+'s per-device
overhead). A wrong reconstruction (a corrupted or mismatched share) is still a field element, so the
aggregator checks every rebuilt secret against what the owner committed to in its advert (the self-mask
commitment, the mask public key) and tries other share subsets if it fails. Python's big ints do the
arithmetic. Reconstruction uses exactly ``t`` shares and Lagrange interpolation at 0 with one batched
modular inversion, so rebuilding the ~100 secrets of a 100-device round costs milliseconds.

Share x-coordinates are ``1..k``: the holder's position (plus one) in the owner's sorted neighbour
list, which both sides and the aggregator derive from the public graph, so x is never taken from the
wire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import nacl.utils

from shared.errors import InvalidValue, SecAggError

PRIME = (1 << 256) + 297
#: Bytes of a serialised share value (257 bits round up to 33 bytes).
SHARE_BYTES = 33
SECRET_BYTES = 32


class NotEnoughShares(SecAggError, ValueError):
    """Fewer than ``t`` shares were offered for a reconstruction."""


def _random_field_element() -> int:
    # 48 random bytes mod p: statistical distance from uniform is below 2^-127.
    return int.from_bytes(nacl.utils.random(48), "little") % PRIME


def split(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shares of ``secret`` at x = 1..holders; any ``threshold`` of them reconstruct it.

    Returns one :data:`SHARE_BYTES`-byte share per holder, the i-th being f(i+1) for a random polynomial
    f of degree ``threshold - 1`` with f(0) = secret.
    """
    if len(secret) != SECRET_BYTES:
        raise InvalidValue(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise InvalidValue(f"need 1 <= threshold <= holders, got t={threshold}, k={holders}")
    coefficients = [int.from_bytes(secret, "little")] + [
        _random_field_element() for _ in range(threshold - 1)
    ]
    coefficients.reverse()  # Horner: highest degree first
    shares = []
    for x in range(1, holders + 1):
        y = 0
        for c in coefficients:
            y = (y * x + c) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "little"))
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_i`` with f(0) = sum l_i f(x_i), via one batched inversion (Montgomery's trick)."""
    if len(set(xs)) != len(xs) or any(x <= 0 or x >= PRIME for x in xs):
        raise SecAggError(f"share x-coordinates must be distinct and in 1..p-1, got {list(xs)}")
    numerators = []
    denominators = []
    for i, xi in enumerate(xs):
        num = 1
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        numerators.append(num)
        denominators.append(den)
    # Batch-invert all denominators with a single pow(): prefix products, then walk back.
    prefix = [1]
    for den in denominators:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    inverses = [0] * len(denominators)
    for i in range(len(denominators) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % PRIME
        inverse = inverse * denominators[i] % PRIME
    return [n * inv % PRIME for n, inv in zip(numerators, inverses)]


def reconstruct(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret behind ``shares`` ({x: share}), using the ``threshold`` smallest x.

    Raises :class:`NotEnoughShares` for fewer than ``threshold`` shares and :class:`SecAggError` when the
    interpolated value cannot be a 32-byte secret. A corrupted share usually still yields *some* 32-byte
    value: callers check the result against the owner's commitment.
    """
    if threshold < 1:
        raise InvalidValue(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise NotEnoughShares(f"need {threshold} shares to reconstruct, got {len(shares)}")
    xs = sorted(shares)[:threshold]
    ys = []
    for x in xs:
        share = shares[x]
        if len(share) != SHARE_BYTES:
            raise SecAggError(f"share for x={x} has {len(share)} bytes, expected {SHARE_BYTES}")
        y = int.from_bytes(share, "little")
        if y >= PRIME:
            raise SecAggError(f"share for x={x} is not a field element")
        ys.append(y)
    secret = sum(c * y for c, y in zip(lagrange_at_zero(xs), ys)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise SecAggError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "little")
