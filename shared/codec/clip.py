"""L2 clipping: the step that bounds one device's contribution.

Everything downstream leans on this bound: the quantizer's scale (no wrap of the modular sum, see
:mod:`shared.codec.quantize`) and the sensitivity of any DP noise (Kairouz et al. 2021, DDG §4) assume that
each device's vector has L2 norm at most ``C``. The norm is accumulated in float64 chunk by chunk, so a
float32 delta of millions of coordinates is measured exactly enough without a float64 copy of it.
"""

from __future__ import annotations

import math

import numpy as np

from shared.errors import CodecError

#: Coordinates converted to float64 at a time while measuring a norm.
CHUNK = 1 << 14


def l2_norm(vector: np.ndarray) -> float:
    """Euclidean norm of a 1-D float vector, accumulated in float64 over bounded chunks."""
    total = 0.0
    for start in range(0, vector.size, CHUNK):
        part = vector[start : start + CHUNK].astype(np.float64)
        total += float(np.dot(part, part))
    return math.sqrt(total)


def clip_factor(vector: np.ndarray, clip_norm: float) -> float:
    """The factor ``min(1, C / ||x||)`` that brings ``vector`` inside the ball of radius ``clip_norm``."""
    if not clip_norm > 0 or not math.isfinite(clip_norm):
        raise CodecError(f"clip norm must be a positive finite number, got {clip_norm!r}")
    norm = l2_norm(vector)
    if not math.isfinite(norm):
        raise CodecError("the update contains NaN or infinite values")
    return 1.0 if norm <= clip_norm else clip_norm / norm


def clip_l2(vector: np.ndarray, clip_norm: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``vector`` scaled so its L2 norm is at most ``clip_norm`` (into ``out`` when given)."""
    factor = clip_factor(vector, clip_norm)
    if out is None:
        scaled: np.ndarray = vector * np.asarray(factor, dtype=vector.dtype)
        return scaled.astype(vector.dtype, copy=False)
    np.multiply(vector, factor, out=out, casting="same_kind")
    return out


class Clip:
    """Pipeline step: scale the delta into the L2 ball of radius ``clip_norm``.

    Not invertible and not needed on decode: the server recovers the clipped sum, which is the quantity
    the protocol promises (McMahan et al. 2018 style per-device clipping).
    """

    def __init__(self, clip_norm: float) -> None:
        self.clip_norm = float(clip_norm)

    def factor(self, vector: np.ndarray) -> float:
        """The multiplier the encoder folds into its first in-place scaling of the working buffer."""
        return clip_factor(vector, self.clip_norm)

    def encode(self, vector: np.ndarray) -> None:
        """Clip ``vector`` in place."""
        factor = self.factor(vector)
        if factor != 1.0:
            vector *= vector.dtype.type(factor)

    def decode(self, vector: np.ndarray) -> None:
        """Clipping has no inverse; the decoder returns the mean of clipped contributions."""
