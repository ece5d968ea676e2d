"""The uplink update codec: a chain of small linear steps, each separately tested (docs/compression.md §1).

Device (:class:`UpdateEncoder`)::

    delta --Clip(C)--> x * w_q --RandomizedHadamard--> --Subsample(p)--> --StochasticQuantize--> Z_{2^b}
                                                                          + weight limbs (WeightCoordinates)

Server (:class:`UpdateDecoder`), on the modular sum of the survivors' vectors::

    un-wrap signed / s --> scatter * 1/p --> (H D)^-1 --> crop to d --> / summed weight

Every step is linear (or unbiased and linear in expectation for the rounding and the mask), so decoding the
sum equals summing the decodes up to rounding (Suresh et al. 2017; Kairouz et al. 2021, DDG §4). The device
multiplies its *clipped* delta by its weight ``w`` in [0, 1] (example count relative to a cap, times any
staleness factor), so its contribution has norm at most ``w C <= C``; the weight itself rides as extra
trailing integer coordinates (:class:`WeightCoordinates`) so that the aggregator learns only sum(w).

Two trusted-aggregator codecs exist for comparison and for deployments without secure aggregation:
:class:`Float32Codec` (plain floats) and :class:`TopKEncoder` (top-k with error feedback, non-linear).
``CodecConfig.validate(secure=True)`` refuses both with a :class:`ConfigError` naming ``scheme``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.codec.clip import Clip, clip_factor
from shared.codec.quantize import StochasticQuantize, no_wrap_scale
from shared.codec.rotation import SEED_BYTES, RandomizedHadamard
from shared.codec.subsample import Subsample
from shared.errors import CodecError, ConfigError

#: ``scheme`` values: the secure-aggregation-compatible integer codec, and the two trusted-only ones.
SCHEME_INT = "int"
SCHEME_FLOAT32 = "float32"
SCHEME_TOPK = "topk"
SCHEMES = (SCHEME_INT, SCHEME_FLOAT32, SCHEME_TOPK)


@dataclass(frozen=True)
class CodecConfig:
    """Per-round uplink codec settings; travels in the round announcement via :meth:`to_dict`.

    ``seed`` is the round's shared 32-byte seed (rotation signs and subsampling mask); ``expected_clients``
    is the most contributors the round may sum (the no-wrap bound and the weight limbs are sized for it);
    ``weight_bits`` is the precision of the weight grid (``w`` is sent as ``round(w * 2^weight_bits)``);
    ``wrap_probability`` is the ``beta`` of :func:`shared.codec.quantize.no_wrap_scale`.
    """

    bits: int
    clip_norm: float
    expected_clients: int
    seed: bytes
    rotation: bool = True
    subsample_rate: float = 1.0
    weight_bits: int = 16
    wrap_probability: float = 1e-9
    scheme: str = SCHEME_INT
    topk_fraction: float = 0.01
    #: Effective DP noise multiplier of the sum (0: no noise); the scale leaves headroom for it.
    noise_multiplier: float = 0.0

    def validate(self, secure: bool = False) -> CodecConfig:
        """Check every field; ``secure=True`` also refuses codecs that cannot run under secure aggregation."""
        if self.scheme not in SCHEMES:
            raise ConfigError("scheme", f"must be one of {SCHEMES}, got {self.scheme!r}")
        if secure and self.scheme != SCHEME_INT:
            reason = (
                "top-k with error feedback is non-linear: the sum of masked top-k vectors is not the "
                "top-k of the sum"
                if self.scheme == SCHEME_TOPK
                else "float vectors cannot be masked in Z_2^b"
            )
            raise ConfigError(
                "scheme",
                f"{self.scheme!r} is not allowed under secure aggregation "
                f"({reason}); use {SCHEME_INT!r} or run in trusted-aggregator mode",
            )
        if not _is_int(self.bits) or not 1 <= self.bits <= 32:
            raise ConfigError("bits", f"must be an integer in 1..32, got {self.bits!r}")
        if not _is_real(self.clip_norm) or not self.clip_norm > 0 or not math.isfinite(self.clip_norm):
            raise ConfigError("clip_norm", f"must be a positive finite number, got {self.clip_norm!r}")
        if not _is_int(self.expected_clients) or self.expected_clients < 1:
            raise ConfigError(
                "expected_clients", f"must be a positive integer, got {self.expected_clients!r}"
            )
        if not isinstance(self.seed, (bytes, bytearray)) or len(self.seed) != SEED_BYTES:
            raise ConfigError("seed", f"must be {SEED_BYTES} bytes")
        if not isinstance(self.rotation, bool):
            raise ConfigError("rotation", f"must be a bool, got {self.rotation!r}")
        if not _is_real(self.subsample_rate) or not 0.0 < self.subsample_rate <= 1.0:
            raise ConfigError("subsample_rate", f"must be in (0, 1], got {self.subsample_rate!r}")
        if not _is_int(self.weight_bits) or not 0 <= self.weight_bits <= 30:
            raise ConfigError("weight_bits", f"must be an integer in 0..30, got {self.weight_bits!r}")
        if not _is_real(self.wrap_probability) or not 0.0 < self.wrap_probability < 1.0:
            raise ConfigError("wrap_probability", f"must be in (0, 1), got {self.wrap_probability!r}")
        if not _is_real(self.noise_multiplier) or not 0.0 <= self.noise_multiplier < 1e6:
            raise ConfigError("noise_multiplier", f"must be >= 0, got {self.noise_multiplier!r}")
        if not _is_real(self.topk_fraction) or not 0.0 < self.topk_fraction <= 1.0:
            raise ConfigError("topk_fraction", f"must be in (0, 1], got {self.topk_fraction!r}")
        if self.scheme == SCHEME_INT and (1 << (self.bits - 1)) - 1 - self.expected_clients <= 0:
            raise ConfigError(
                "bits",
                f"{self.bits} bits cannot hold the rounding error of "
                f"{self.expected_clients} clients; need at least "
                f"{(self.expected_clients + 1).bit_length() + 1} (more for accuracy)",
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (``seed`` as bytes, i.e. msgpack ``bin``)."""
        plain = dataclasses.asdict(self)
        plain["seed"] = bytes(self.seed)
        return plain

    @classmethod
    def from_dict(cls, plain: dict[str, Any]) -> CodecConfig:
        """Inverse of :meth:`to_dict`; unknown or missing fields and bad values raise :class:`ConfigError`."""
        if not isinstance(plain, dict):
            raise ConfigError("codec", "must be a map")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in plain:
            if key not in names:
                raise ConfigError(str(key), "unknown codec field")
        try:
            config = cls(**plain)
        except TypeError as error:
            raise ConfigError("codec", str(error)) from None
        return config.validate()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class WeightCoordinates:
    """Pipeline step: the device weight as exact integer limbs appended to the vector.

    ``W = round(w * 2^k)`` (``k = weight_bits``) lies in ``[0, 2^k]``. It is split into limbs of ``L`` bits,
    ``L`` the largest width with ``n (2^L - 1) <= 2^b - 1``: the sum of ``n`` limbs then never wraps, so the
    server recovers ``sum W_i = sum_j S_j 2^(L j)`` exactly from the limb sums ``S_j``. The device scales its
    delta by the grid value ``W / 2^k`` (not ``w``), so the decoded mean uses exactly the summed weight.
    """

    def __init__(self, bits: int, weight_bits: int, clients: int) -> None:
        headroom = ((1 << bits) - 1) // clients
        if headroom < 1:
            raise CodecError(f"{clients} clients overflow a {bits}-bit weight coordinate")
        self.limb_bits = (headroom + 1).bit_length() - 1
        self.weight_bits = weight_bits
        self.clients = clients
        self.count = -(-(weight_bits + 1) // self.limb_bits)

    def grid(self, weight: float) -> int:
        """The integer weight ``round(w * 2^k)``; ``w`` must be in [0, 1]."""
        if not _is_real(weight) or not 0.0 <= weight <= 1.0:
            raise CodecError(f"device weight must be in [0, 1], got {weight!r}")
        return round(weight * (1 << self.weight_bits))

    def encode(self, grid_weight: int, out: np.ndarray) -> None:
        """Write the limbs of ``grid_weight`` into ``out`` (length :attr:`count`)."""
        limb_mask = (1 << self.limb_bits) - 1
        for j in range(self.count):
            out[j] = (grid_weight >> (self.limb_bits * j)) & limb_mask

    def decode(self, limb_sums: np.ndarray, contributors: int) -> float:
        """The summed weight ``sum w_i`` from the summed limbs; refuses impossible totals."""
        total = sum(int(s) << (self.limb_bits * j) for j, s in enumerate(limb_sums))
        if total > contributors << self.weight_bits:
            raise CodecError(
                f"summed weight {total / (1 << self.weight_bits)} exceeds {contributors} "
                "contributors of weight <= 1: the sum is corrupt or wrapped"
            )
        return total / (1 << self.weight_bits)


class _IntegerChain:
    """The steps and sizes shared by :class:`UpdateEncoder` and :class:`UpdateDecoder`."""

    def __init__(self, config: CodecConfig, dim: int) -> None:
        config.validate()
        if config.scheme != SCHEME_INT:
            raise ConfigError(
                "scheme",
                f"the integer update codec needs scheme {SCHEME_INT!r}, "
                f"got {config.scheme!r}; use Float32Codec / TopKEncoder",
            )
        if not _is_int(dim) or dim < 1:
            raise CodecError(f"update dimension must be a positive integer, got {dim!r}")
        self.config = config
        self.dim = dim
        self.clip = Clip(config.clip_norm)
        self.rotate = RandomizedHadamard(dim, config.seed) if config.rotation else None
        self.padded_dim = self.rotate.padded_dim if self.rotate is not None else dim
        mixing = self.rotate.mixing_dim if self.rotate is not None else dim
        self.subsample = Subsample(self.padded_dim, config.subsample_rate, config.seed)
        scale = no_wrap_scale(
            config.bits,
            config.clip_norm,
            mixing,
            config.expected_clients,
            config.wrap_probability,
            config.rotation,
            coordinates=self.padded_dim,
            noise_multiplier=config.noise_multiplier,
        )
        self.quantize = StochasticQuantize(scale, config.bits)
        self.weights = WeightCoordinates(config.bits, config.weight_bits, config.expected_clients)
        self.data_length = self.subsample.kept

    @property
    def encoded_length(self) -> int:
        """Coordinates of one encoded update: kept data coordinates, then the weight limbs."""
        return self.data_length + self.weights.count

    @property
    def scale(self) -> float:
        """Integer units per unit of the rotated vector (see :func:`no_wrap_scale`)."""
        return self.quantize.scale


class UpdateEncoder(_IntegerChain):
    """Device side: float32 delta + weight -> vector of Z_{2^b} of :attr:`encoded_length` coordinates.

    Memory: one uint32 buffer of ``d_pad + weight limbs`` words is allocated; the float32 work (clip and
    weight scaling, rotation, compaction) happens in place in a float32 view of it, rounding writes the
    integers over the floats chunk by chunk, and the buffer is shrunk in place to the kept length. Extra
    memory is therefore about ``4 d_pad`` bytes plus 64k-coordinate chunks.
    """

    def encode(self, delta: np.ndarray, weight: float, rng: np.random.Generator) -> np.ndarray:
        """Encode ``weight * clip(delta)`` and ``weight``; ``rng`` is the device's private generator."""
        delta = np.asarray(delta)
        if delta.shape != (self.dim,) or delta.dtype != np.float32:
            raise CodecError(
                f"expected a float32 delta of shape ({self.dim},), got {delta.dtype} {delta.shape}"
            )
        grid_weight = self.weights.grid(weight)
        factor = clip_factor(delta, self.clip.clip_norm) * (grid_weight / (1 << self.weights.weight_bits))
        buffer = np.empty(self.padded_dim + self.weights.count, dtype=np.uint32)
        work = buffer[: self.padded_dim].view(np.float32)
        np.multiply(delta, np.float32(factor), out=work[: self.dim])
        work[self.dim :] = 0.0
        if self.rotate is not None:
            self.rotate.encode(work)
        kept = self.subsample.encode(work)
        self.quantize.encode(work[:kept], buffer[:kept], rng)
        del work
        self.weights.encode(grid_weight, buffer[kept : kept + self.weights.count])
        if kept != self.padded_dim:
            buffer.resize(kept + self.weights.count, refcheck=False)
        return buffer


class UpdateDecoder(_IntegerChain):
    """Server side: the modular sum of ``n`` encodings -> (weighted-mean delta, summed weight)."""

    def decode(self, summed: np.ndarray, n_contributors: int) -> tuple[np.ndarray, float]:
        """Return ``(sum_i w_i clip(delta_i) / sum_i w_i, sum_i w_i)`` as (float32 vector, float).

        Raises :class:`CodecError` if the vector has the wrong length or values outside Z_{2^b}, if more
        devices contributed than the scale was sized for, or if the summed weight is zero.
        """
        summed = np.asarray(summed)
        if summed.shape != (self.encoded_length,) or summed.dtype != np.uint32:
            raise CodecError(
                f"expected a uint32 sum of shape ({self.encoded_length},), got {summed.dtype} {summed.shape}"
            )
        if not _is_int(n_contributors) or not 1 <= n_contributors <= self.config.expected_clients:
            raise CodecError(
                f"{n_contributors} contributors, but the round's codec is sized for 1.."
                f"{self.config.expected_clients}; the sum may have wrapped"
            )
        if self.config.bits < 32 and int(summed.max()) >> self.config.bits:
            raise CodecError(f"summed values must lie in Z_2^{self.config.bits}")
        total_weight = self.weights.decode(summed[self.data_length :], n_contributors)
        if total_weight == 0.0:
            raise CodecError("summed weight is zero: no contributor carried any weight")
        full = self.subsample.decode(self.quantize.decode(summed[: self.data_length]))
        if self.rotate is not None:
            self.rotate.decode(full)
        mean = full[: self.dim]
        mean /= total_weight
        return mean.astype(np.float32), total_weight


class Float32Codec:
    """Trusted-aggregator baseline: ``[w * clip(delta), w]`` as float32; the server sums and divides.

    Linear, but floats cannot be masked in Z_{2^b}, so it is refused under secure aggregation. It is also
    the accumulator format for :class:`TopKEncoder`'s sparse updates.
    """

    def __init__(self, config: CodecConfig, dim: int) -> None:
        config.validate()
        self.config = config
        self.dim = dim
        self.encoded_length = dim + 1

    def encode(self, delta: np.ndarray, weight: float) -> np.ndarray:
        """``[w * clip(delta), w]``; the weight is sent in the clear (trusted mode)."""
        if np.asarray(delta).shape != (self.dim,):
            raise CodecError(f"expected a delta of shape ({self.dim},), got {np.asarray(delta).shape}")
        if not _is_real(weight) or not 0.0 <= weight <= 1.0:
            raise CodecError(f"device weight must be in [0, 1], got {weight!r}")
        out = np.empty(self.dim + 1, dtype=np.float32)
        np.multiply(delta, np.float32(clip_factor(delta, self.config.clip_norm) * weight), out=out[:-1])
        out[-1] = weight
        return out

    def decode(self, summed: np.ndarray, n_contributors: int) -> tuple[np.ndarray, float]:
        """``(sum[:d] / sum[d], sum[d])`` from the element-wise sum of encodings."""
        summed = np.asarray(summed, dtype=np.float64)
        if summed.shape != (self.encoded_length,):
            raise CodecError(f"expected a sum of shape ({self.encoded_length},), got {summed.shape}")
        total_weight = float(summed[-1])
        if not 0.0 < total_weight <= n_contributors + 1e-6:
            raise CodecError(f"summed weight {total_weight} is impossible for {n_contributors} contributors")
        return (summed[:-1] / total_weight).astype(np.float32), total_weight


@dataclass(frozen=True)
class SparseUpdate:
    """A top-k update: sorted coordinate indices, their values and the device weight."""

    indices: np.ndarray
    values: np.ndarray
    weight: float

    def add_into(self, accumulator: np.ndarray) -> None:
        """Add into a dense ``Float32Codec`` accumulator of length ``d + 1`` (last entry: weight)."""
        accumulator[self.indices] += self.values
        accumulator[-1] += self.weight


class TopKEncoder:
    """Trusted-mode only: send the ``k = ceil(topk_fraction * d)`` largest coordinates, keep the rest.

    Error feedback (Stich et al. 2018; the "sketched/sparse update" family of Konečný et al. 2016): what is
    not sent this round is added to the next round's delta, so nothing is lost in the long run. The object
    must therefore live across rounds on the device. Selecting the top coordinates depends on the values,
    so the sum of top-k vectors is not the top-k of the sum: non-linear, refused under secure aggregation.
    """

    def __init__(self, config: CodecConfig, dim: int) -> None:
        config.validate()
        if config.scheme != SCHEME_TOPK:
            raise ConfigError("scheme", f"TopKEncoder needs scheme {SCHEME_TOPK!r}, got {config.scheme!r}")
        self.config = config
        self.dim = dim
        self.k = max(1, math.ceil(config.topk_fraction * dim))
        self.residual = np.zeros(dim, dtype=np.float32)

    def encode(self, delta: np.ndarray, weight: float) -> SparseUpdate:
        """Top-k of ``w * clip(delta) + residual``; the unsent remainder becomes the new residual."""
        if np.asarray(delta).shape != (self.dim,):
            raise CodecError(f"expected a delta of shape ({self.dim},), got {np.asarray(delta).shape}")
        if not _is_real(weight) or not 0.0 <= weight <= 1.0:
            raise CodecError(f"device weight must be in [0, 1], got {weight!r}")
        factor = np.float32(clip_factor(delta, self.config.clip_norm) * weight)
        self.residual += delta * factor
        top = np.sort(np.argpartition(np.abs(self.residual), self.dim - self.k)[self.dim - self.k :])
        values = self.residual[top].copy()
        self.residual[top] = 0.0
        return SparseUpdate(top.astype(np.uint32), values, float(weight))
