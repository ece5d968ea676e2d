"""Noise samplers: integer Skellam noise for distributed DP, continuous Gaussian noise for central DP.

Distributed mode (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021): each device adds Skellam noise to its *integer* (scaled, rotated, rounded) update
before the modular wrap and the secure-aggregation mask. A symmetric Skellam variable is the difference of
two independent Poisson(μ) draws, so it has mean 0 and variance 2μ; independent Skellams add up to a
Skellam whose variance is the sum of the variances. The securely aggregated sum therefore carries exactly
the total variance of the surviving devices' shares, in integers, with no rounding of the noise — which is
why Skellam (and not a rounded Gaussian) fits the modular arithmetic of secure aggregation.

Central mode: the aggregator, which is trusted, adds continuous Gaussian noise to the decoded float sum.

All samplers take an optional injected :class:`numpy.random.Generator` (for reproducible tests); by
default they draw from a generator seeded with 256 bits from the OS CSPRNG. numpy's PCG64 is not a
cryptographic generator and its float-based Poisson sampler is not constant-time; this is the same
trade-off TensorFlow Privacy makes, and it is stated in docs/privacy.md.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
from numpy.typing import NDArray

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

#: Coordinates generated per chunk; bounds the temporary memory to a few MiB at d = 10^6 and beyond.
DEFAULT_CHUNK = 1 << 18

#: Largest per-coordinate variance accepted. Far above any sane setting; keeps every draw (and the sum of
#: thousands of them) inside int64 with a huge margin.
MAX_VARIANCE = float(2**52)


def secure_generator() -> np.random.Generator:
    """A fresh PCG64 generator seeded with 256 bits from ``os.urandom``.

    A fresh seed per call means that two devices (or two rounds) never share a noise stream, which would
    let noise cancel in the sum.
    """
    seed = int.from_bytes(os.urandom(32), "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ConfigError("size", f"must be a non-negative integer, got {size!r}")
    return int(size)


def _check_chunk(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ConfigError("chunk_size", f"must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def skellam_noise(
    size: int,
    variance: float,
    *,
    rng: np.random.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NDArray[np.int64]:
    """``size`` i.i.d. symmetric Skellam draws with the given per-coordinate ``variance`` (int64).

    Each coordinate is ``Poisson(variance/2) - Poisson(variance/2)``. Generated in chunks of ``chunk_size``
    so a 10^6-coordinate update does not need two extra full-size temporaries. ``variance == 0`` returns
    zeros (the caller decides whether that is allowed; :class:`shared.dp.config.DPConfig` never allows it
    when DP is on).
    """
    n = _check_size(size)
    chunk = _check_chunk(chunk_size)
    variance = float(variance)
    if not math.isfinite(variance) or variance < 0.0 or variance > MAX_VARIANCE:
        raise ConfigError("variance", f"must be finite and in [0, {MAX_VARIANCE:g}], got {variance!r}")
    out = np.zeros(n, dtype=np.int64)
    if variance == 0.0 or n == 0:
        return out
    generator = rng if rng is not None else secure_generator()
    lam = variance / 2.0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        positive = generator.poisson(lam, size=stop - start)
        negative = generator.poisson(lam, size=stop - start)
        np.subtract(positive, negative, out=out[start:stop], casting="unsafe")
    return out


def gaussian_noise(
    size: int,
    std: float,
    *,
    rng: np.random.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NDArray[np.float64]:
    """``size`` i.i.d. N(0, std²) draws (float64), chunked like :func:`skellam_noise`."""
    n = _check_size(size)
    chunk = _check_chunk(chunk_size)
    std = float(std)
    if not math.isfinite(std) or std < 0.0:
        raise ConfigError("std", f"must be finite and >= 0, got {std!r}")
    out = np.zeros(n, dtype=np.float64)
    if std == 0.0 or n == 0:
        return out
    generator = rng if rng is not None else secure_generator()
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        generator.standard_normal(size=stop - start, out=out[start:stop])
    out *= std
    return out


def add_central_gaussian_noise(
    decoded_sum: NDArray[np.floating],
    std: float,
    *,
    rng: np.random.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NDArray[np.float64]:
    """Central mode: return ``decoded_sum + N(0, std²·I)`` as a new float64 array.

    Applied by the aggregator after unmasking and decoding the float *sum* (before dividing by the summed
    weight), so ``std`` is in the units of the sum: ``noise_multiplier * sensitivity`` where the
    sensitivity is the clip norm (see :func:`shared.dp.calibration.central_noise_std`). The input is not
    modified.
    """
    values = np.asarray(decoded_sum, dtype=np.float64)
    if values.ndim != 1:
        raise ConfigError("decoded_sum", f"must be a flat vector, got shape {values.shape}")
    if std <= 0.0:
        raise ConfigError("std", f"central mode needs std > 0, got {std!r}")
    noisy = gaussian_noise(values.size, std, rng=rng, chunk_size=chunk_size)
    noisy += values
    logger.debug("central gaussian noise added: d=%d std=%.6g", values.size, std)
    return noisy
