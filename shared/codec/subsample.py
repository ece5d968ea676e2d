"""Shared-seed coordinate subsampling: send only a random subset of the rotated coordinates.

Every device of a round derives the same Bernoulli(p) mask from the round seed, so the kept coordinates
line up across devices and the modular sum of the short vectors is the short vector of the sum: the step
is linear, as secure aggregation requires (docs/compression.md §1). This is the "random mask" structured
update of Konečný et al. 2016 (§3.1) applied after the Hadamard rotation, which spreads the update's energy
evenly so that any subset carries a fair share of it (Suresh et al. 2017).

Unbiasedness: the decoder scatters the kept coordinates back and multiplies them by ``1/p``; since each
coordinate is kept with probability ``p`` over the round seed, ``E[decode(encode(x))] = x``. The number
of kept coordinates is random (Binomial(d_pad, p)) but fixed by the seed, so encoder and decoder agree on
the vector length before any data moves. Scaling happens on the server, not the device, so the no-wrap
bound of the quantizer is unchanged.

The mask is regenerated in chunks from raw PCG64 words (stable across numpy versions, see
:mod:`shared.codec.rotation`): a coordinate is kept when the top 53 bits of its word, read as a fraction
in [0, 1), are below ``p``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shared.codec.rotation import CHUNK, PURPOSE_SUBSAMPLE, seeded_bits
from shared.errors import CodecError


class Subsample:
    """Pipeline step: keep coordinates where the shared mask is set; decode scatters and scales ``1/p``."""

    def __init__(self, padded_dim: int, rate: float, seed: bytes) -> None:
        if not 0.0 < rate <= 1.0:
            raise CodecError(f"subsample rate must be in (0, 1], got {rate!r}")
        self.padded_dim = padded_dim
        self.rate = float(rate)
        self.seed = bytes(seed)
        self.kept = padded_dim if rate == 1.0 else sum(int(m.sum()) for _, m in self._mask_chunks())

    def _mask_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        bits = seeded_bits(self.seed, PURPOSE_SUBSAMPLE)
        threshold = np.uint64(min(int(self.rate * 2.0**53), 1 << 53))
        for start in range(0, self.padded_dim, CHUNK):
            n = min(CHUNK, self.padded_dim - start)
            yield start, (bits.random_raw(n) >> np.uint64(11)) < threshold

    def mask(self) -> np.ndarray:
        """The boolean mask of kept coordinates (for tests and inspection)."""
        if self.rate == 1.0:
            return np.ones(self.padded_dim, dtype=bool)
        return np.concatenate([m for _, m in self._mask_chunks()])

    def encode(self, vector: np.ndarray) -> int:
        """Compact the kept coordinates to the front of ``vector`` in place; return how many were kept.

        Chunks are visited in order and the write position never passes the read position, so the
        compaction needs no buffer beyond one chunk.
        """
        if vector.size != self.padded_dim:
            raise CodecError(f"subsampling expects {self.padded_dim} coordinates, got {vector.size}")
        if self.rate == 1.0:
            return self.padded_dim
        write = 0
        for start, keep in self._mask_chunks():
            picked = vector[start : start + keep.size][keep]
            vector[write : write + picked.size] = picked
            write += picked.size
        return write

    def decode(self, kept_values: np.ndarray) -> np.ndarray:
        """Scatter the kept coordinates into a zero vector of :attr:`padded_dim` and scale them by ``1/p``."""
        if kept_values.size != self.kept:
            raise CodecError(f"expected {self.kept} subsampled coordinates, got {kept_values.size}")
        if self.rate == 1.0:
            return kept_values
        full = np.zeros(self.padded_dim, dtype=kept_values.dtype)
        read = 0
        for start, keep in self._mask_chunks():
            count = int(keep.sum())
            full[start : start + keep.size][keep] = kept_values[read : read + count]
            read += count
        full *= full.dtype.type(1.0 / self.rate)
        return full
