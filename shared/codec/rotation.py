"""Randomised Hadamard rotation with a per-round shared seed.

Why: after multiplying by random signs ``D`` and the orthonormal Walsh–Hadamard matrix ``H``, every
coordinate of ``H D x`` is a Rademacher sum with variance proxy ``||x||^2 / d_pad``, i.e. the energy of a
spiky update is spread evenly over all coordinates. That makes a uniform integer grid efficient (Suresh et
al. 2017, "Distributed mean estimation with limited communication", §4) and gives the per-coordinate tail
bound the quantizer uses to rule out wrap-around of the modular sum (Kairouz et al. 2021, DDG §4.1).
``H D`` is linear and orthogonal, so the server can rotate back the *sum* of all devices' vectors.

Padding: the vector is zero-padded to the next power of two ``d_pad`` and rotated as one block. One block
keeps the tail bound at ``C / sqrt(d_pad)`` whatever the shape of the update; block-wise rotation would
pad less but only guarantees ``C / sqrt(block)``, costing bits on every coordinate. The price is up to 2x
coordinates when ``d`` is just above a power of two (4.9% for ``d = 10^6``); choose layer subsets
accordingly.

Randomness: the signs come from the *raw* 64-bit output of PCG64 seeded through ``SeedSequence`` with the
round's 32-byte seed. Both are stream-stable across numpy versions (unlike ``Generator`` methods), so two
devices with different numpy builds draw the same signs. Each use of the seed is separated by a
``spawn_key`` (:data:`PURPOSE_SIGNS`, ...), so the subsampling mask is independent of the signs.

Cost: ``log2(d_pad)`` butterfly passes over the reshaped array, each done in place with three vector
operations (``a += b; b *= -2; b += a`` turns ``(a, b)`` into ``(a + b, a - b)``) — no temporaries of the
vector's size.
"""

from __future__ import annotations

import numpy as np

from shared.errors import CodecError

#: ``spawn_key`` values separating the uses of one round seed.
PURPOSE_SIGNS = 1
PURPOSE_SUBSAMPLE = 2
#: Coordinates per chunk when drawing signs or masks; any multiple of 64 yields the same stream.
CHUNK = 1 << 16
SEED_BYTES = 32


def padded_dim(dim: int) -> int:
    """Next power of two at or above ``dim`` (at least 1)."""
    if dim < 1:
        raise CodecError(f"dimension must be positive, got {dim}")
    return 1 << (dim - 1).bit_length()


def seeded_bits(seed: bytes, purpose: int) -> np.random.PCG64:
    """A PCG64 bit generator for one use (``purpose``) of a round seed; stable across numpy versions."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise CodecError(f"round seed must be {SEED_BYTES} bytes")
    entropy = int.from_bytes(bytes(seed), "little")
    return np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(purpose,)))


def fwht(vector: np.ndarray) -> None:
    """Orthonormal fast Walsh–Hadamard transform of a power-of-two-length 1-D float array, in place.

    ``H`` is symmetric and orthogonal once scaled by ``1/sqrt(n)``, so this function is its own inverse.
    """
    n = vector.size
    if n & (n - 1):
        raise CodecError(f"Hadamard transform needs a power-of-two length, got {n}")
    half = 1
    while half < n:
        pairs = vector.reshape(-1, 2, half)
        upper = pairs[:, 0, :]
        lower = pairs[:, 1, :]
        upper += lower
        lower *= -2
        lower += upper
        half *= 2
    if n > 1:
        vector *= vector.dtype.type(1.0 / np.sqrt(n))


class RandomizedHadamard:
    """Pipeline step: ``x -> H D x`` on a buffer of length :attr:`padded_dim` (zero-padded by the caller).

    The sign vector is regenerated chunk by chunk on every call rather than stored, so an encoder holds
    no per-round state of the model's size.
    """

    def __init__(self, dim: int, seed: bytes) -> None:
        self.dim = dim
        self.padded_dim = padded_dim(dim)
        self.seed = bytes(seed)
        seeded_bits(self.seed, PURPOSE_SIGNS)  # validate the seed early

    def _apply_signs(self, vector: np.ndarray) -> None:
        bits = seeded_bits(self.seed, PURPOSE_SIGNS)
        for start in range(0, self.padded_dim, CHUNK):
            part = vector[start : start + CHUNK]
            words = bits.random_raw((part.size + 63) // 64).astype("<u8")
            flips = np.unpackbits(words.view(np.uint8), bitorder="little", count=part.size).view(bool)
            np.negative(part, out=part, where=flips)

    def encode(self, vector: np.ndarray) -> None:
        """Rotate ``vector`` (length :attr:`padded_dim`) in place: signs, then Hadamard."""
        self._check(vector)
        self._apply_signs(vector)
        fwht(vector)

    def decode(self, vector: np.ndarray) -> None:
        """Undo :meth:`encode` in place: ``(H D)^-1 = D H``."""
        self._check(vector)
        fwht(vector)
        self._apply_signs(vector)

    def _check(self, vector: np.ndarray) -> None:
        if vector.ndim != 1 or vector.size != self.padded_dim:
            raise CodecError(f"rotation expects {self.padded_dim} coordinates, got shape {vector.shape}")
