"""Scale, stochastically round and wrap into Z_{2^b}; on the server, un-wrap the *sum* and unscale.

Rounding: ``q = floor(s*y + u)`` with ``u ~ U[0, 1)`` drawn from the device's private generator is
unbiased, ``E[q] = s*y``, with variance at most 1/4 per coordinate (Suresh et al. 2017, §3; the same
randomised rounding Kairouz et al. 2021 use before adding discrete Gaussian noise, DDG §4).

Scale (why the modular sum does not wrap). Let every device's vector have L2 norm at most ``C`` (clipping
and a weight ``w <= 1``) and let the round's ``n`` vectors be rotated by the same random ``H D`` of
dimension ``d_pad``. The rotated *sum* is ``H D z`` with ``||z|| <= n C``; each coordinate is a Rademacher
sum with variance proxy ``||z||^2 / d_pad``, so by Hoeffding and a union bound over ``d_pad`` coordinates

    P(max_j |(H D z)_j| > t) <= 2 d_pad exp(-t^2 d_pad / (2 n^2 C^2)) = beta
    for t = n C sqrt(2 ln(2 d_pad / beta) / d_pad).

Each device's rounding moves its integer by less than 1, so ``|sum of integers| < s t + n``. The signed
range of ``b`` bits is ``[-2^(b-1), 2^(b-1) - 1]``, hence the scale

    s = (2^(b-1) - 1 - n) / (t (1 + 1e-5))

(the ``1e-5`` absorbs float32 rounding in clipping and rotation) makes the un-wrapped sum exact except with
probability at most ``beta`` over the round's signs. Without rotation the bound is the deterministic
``t = n C`` (a coordinate is at most the norm). ``beta`` is a property of the round seed, not of the data,
provided the devices' updates do not depend on the seed (they are trained before it is used). A malicious
device can always wrap the sum by sending arbitrary integers; secure aggregation cannot see that.

Differential-privacy headroom. When devices add integer noise whose sum has standard deviation at most
``z (C s + sqrt(d))`` per coordinate (``z`` the effective noise multiplier, ``C s + sqrt(d)`` the
worst-case sensitivity of a rounded update, Kairouz et al. 2021 Thm. 1), a sub-Gaussian tail bound over
the ``d`` coordinates adds ``z (C s + sqrt(d)) sqrt(2 ln(2 d / beta))`` to the range the sum needs, so

    s = (2^(b-1) - 1 - n - z sqrt(d) tau) / (t + z C tau),    tau = sqrt(2 ln(2 d / beta))

and the sum wraps with probability at most ``2 beta`` (signal and noise tails together).
"""

from __future__ import annotations

import math

import numpy as np

from shared.errors import CodecError

#: Coordinates rounded at a time (float64 scratch of this size only).
CHUNK = 1 << 14
#: Relative slack for float32 rounding in clipping and rotation.
FLOAT_SLACK = 1e-5


def coordinate_bound(
    clip_norm: float,
    padded_dim: int,
    clients: int,
    wrap_probability: float,
    rotated: bool = True,
    coordinates: int | None = None,
) -> float:
    """High-probability bound ``t`` on every coordinate of the rotated sum of ``clients`` vectors.

    ``padded_dim`` is the Hadamard block length (each coordinate mixes that many terms) and
    ``coordinates`` the number of coordinates the union bound runs over (default: ``padded_dim``).
    """
    if not rotated:
        return clients * clip_norm
    count = padded_dim if coordinates is None else coordinates
    return clients * clip_norm * math.sqrt(2.0 * math.log(2.0 * count / wrap_probability) / padded_dim)


def no_wrap_scale(
    bits: int,
    clip_norm: float,
    padded_dim: int,
    clients: int,
    wrap_probability: float,
    rotated: bool = True,
    *,
    coordinates: int | None = None,
    noise_multiplier: float = 0.0,
) -> float:
    """The largest scale ``s`` for which the sum of ``clients`` encodings wraps with probability <= beta.

    See the module docstring for the derivation; raises :class:`CodecError` when ``bits`` leaves no room.
    """
    room: float = (1 << (bits - 1)) - 1 - clients
    if room <= 0:
        raise CodecError(f"{bits} bits cannot hold the rounding error of {clients} clients; use more bits")
    bound = coordinate_bound(clip_norm, padded_dim, clients, wrap_probability, rotated, coordinates)
    if noise_multiplier > 0:
        count = padded_dim if coordinates is None else coordinates
        tau = math.sqrt(2.0 * math.log(2.0 * count / wrap_probability))
        room -= noise_multiplier * math.sqrt(count) * tau
        bound += noise_multiplier * clip_norm * tau
        if room <= 0:
            raise CodecError(f"{bits} bits leave no room for noise multiplier {noise_multiplier}; add bits")
    return room / (bound * (1.0 + FLOAT_SLACK))


def unwrap_signed(summed: np.ndarray, bits: int) -> np.ndarray:
    """Read values of Z_{2^b} as signed integers: values ``>= 2^(b-1)`` are negative (int64 result)."""
    signed = summed.astype(np.int64)
    signed[signed >= (1 << (bits - 1))] -= 1 << bits
    return signed


class StochasticQuantize:
    """Pipeline step: float coordinates -> Z_{2^b} (device), summed Z_{2^b} -> floats (server)."""

    def __init__(self, scale: float, bits: int) -> None:
        if not 1 <= bits <= 32:
            raise CodecError(f"bit width must be in 1..32, got {bits}")
        if not scale > 0 or not math.isfinite(scale):
            raise CodecError(f"quantizer scale must be positive and finite, got {scale!r}")
        self.scale = float(scale)
        self.bits = bits
        self.modulus_mask = (1 << bits) - 1

    def encode(self, values: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
        """Round ``values`` (float) into ``out`` (uint32, may share memory with ``values``), chunk by chunk.

        Each chunk is read into float64 scratch before its slot in ``out`` is written, so ``out`` may be
        a ``uint32`` view of the same buffer; float64 keeps ``s*y`` exact enough for ``b`` up to 32.
        """
        if values.size != out.size or out.dtype != np.uint32:
            raise CodecError("quantizer output must be a uint32 vector of the input's length")
        mask = np.int64(self.modulus_mask)
        for start in range(0, values.size, CHUNK):
            scaled = values[start : start + CHUNK].astype(np.float64)
            scaled *= self.scale
            scaled += rng.random(scaled.size)
            rounded = np.floor(scaled).astype(np.int64)
            rounded &= mask  # two's complement & mask == value mod 2^b
            out[start : start + CHUNK] = rounded

    def decode(self, summed: np.ndarray) -> np.ndarray:
        """Un-wrap a sum of encodings to signed integers and divide by the scale (float64 result)."""
        signed = unwrap_signed(summed, self.bits).astype(np.float64)
        signed /= self.scale
        return signed
