"""Sizing the noise: sensitivity after quantisation, per-device shares under dropouts, and ε targets.

Units. The codec maps a clipped float update x (‖x‖₂ ≤ C) to an integer vector: rotate (orthogonal, so the
norm is kept), multiply by the scale s, stochastically round. Everything in *distributed* mode is measured
in these integer units: sensitivities, noise variances, the target std of the summed noise.

Noise multiplier z: the multiplier of the *Gaussian mechanism that provably dominates a round* — for
central mode the std of the Gaussian noise over the L2 sensitivity; for distributed mode
1/(m₁(μ)·Δ₂) from :mod:`shared.dp.skellam`, a hair below the equal-variance √μ/Δ₂. The accountant
(:mod:`shared.dp.accounting`) only needs z per round, and every ε computed from it is a proven bound.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from dp_accounting import get_sigma_gaussian
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon as rdp_compute_epsilon
from numpy.typing import NDArray

from shared.dp.accounting import (
    DEFAULT_DISCRETIZATION,
    accounting_delta,
    epsilon_for_constant_noise,
    normalise_sampling_q,
)
from shared.dp.skellam import MAX_DIM, skellam_noise_multiplier, skellam_variance_for
from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.codec import CodecConfig, UpdateEncoder


class _HasDropoutMargin(Protocol):
    """What :func:`device_noise_plan` reads from a :class:`shared.dp.config.DPConfig`."""

    @property
    def dropout_margin(self) -> float: ...

logger = logging.getLogger(__name__)

#: Integer RDP orders used for the Skellam bound (Agarwal et al. state it for integer α > 1).
SKELLAM_RDP_ORDERS: tuple[int, ...] = (*range(2, 129), 160, 192, 256)


def _positive(field: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0.0:
        raise ConfigError(field, f"must be a finite number > 0, got {value!r}")
    return number


def _dimension(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError("dim", f"must be a positive integer, got {dim!r}")
    return int(dim)


# -- sensitivity after rotation + scaling + stochastic rounding ----------------------------------------------


def inflated_l2_bound(clip_norm: float, scale: float, dim: int, beta: float) -> float:
    """L2 sensitivity, in integer units, of one device's rounded update.

    Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
    Aggregation", ICML 2021, Theorem 1 (conditional randomized rounding), as used by TensorFlow Privacy /
    TensorFlow Federated for both the DDG and the Skellam aggregators. With c = C·s and d coordinates::

        Δ₂ = min( c + √d ,  sqrt( c² + d/4 + √(2 ln(1/β)) · (c + √d/2) ) )

    The first term is the worst case of rounding every coordinate the wrong way; the second holds when the
    codec uses *conditional* randomized rounding — re-draw the rounding until ‖rounded‖₂ does not exceed
    the second term, which happens with probability ≥ 1 − β per draw. ``beta = 0`` means no conditional
    rounding, so only the first term applies. If the codec rounds unconditionally, pass ``beta=0``.
    """
    c = _positive("clip_norm", clip_norm) * _positive("scale", scale)
    d = _dimension(dim)
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ConfigError("beta", f"must be in [0, 1), got {beta!r}")
    worst_case = c + math.sqrt(d)
    if beta == 0.0:
        return worst_case
    conditional = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return min(worst_case, math.sqrt(conditional))


def inflated_l1_bound(l2_bound: float, dim: int) -> float:
    """L1 sensitivity of an integer vector with L2 norm ≤ ``l2_bound``: Δ₁ ≤ Δ₂ · min(√d, Δ₂).

    Cauchy–Schwarz gives Δ₁ ≤ √d·Δ₂; integrality gives |v_i| ≤ v_i², so Δ₁ ≤ Δ₂². Used by the Skellam RDP
    bound (Agarwal et al. 2021), as in TensorFlow Federated's ``distributed_dp``.
    """
    l2 = _positive("l2_bound", l2_bound)
    return l2 * min(math.sqrt(_dimension(dim)), l2)


def central_noise_std(
    noise_multiplier: float,
    clip_norm: float,
    *,
    scale: float | None = None,
    dim: int | None = None,
    beta: float = 0.0,
) -> float:
    """Std of the Gaussian noise the aggregator adds to the decoded float sum in central mode.

    Without quantisation the sensitivity is the clip norm C. If the sum was quantised (``scale`` given),
    a device's decoded contribution can be as long as ``inflated_l2_bound(C, s, d, β) / s``, so that is the
    sensitivity used.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    if scale is None:
        return z * _positive("clip_norm", clip_norm)
    if dim is None:
        raise ConfigError("dim", "is required with scale (the quantised sensitivity depends on it)")
    return z * inflated_l2_bound(clip_norm, scale, dim, beta) / float(scale)


# -- per-device noise shares and dropouts --------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceNoisePlan:
    """How much Skellam noise each device adds so the sum's *proven* noise multiplier meets the target.

    The noise credited to a round is that of the surviving devices *other than* the one whose privacy is
    measured — ``per_device_variance × (survivors − 1)`` — because only that noise is present both with
    and without the device (docs/privacy.md, assumptions). Every device adds ``per_device_variance`` so
    that, if at least ``min_survivors`` devices' noise reaches the sum, the credited noise has a proven
    multiplier (:func:`shared.dp.skellam.skellam_noise_multiplier`) of at least the target. What the
    accountant records is :meth:`noise_multiplier_present`, the proven multiplier of the noise that really
    reached the sum.
    """

    per_device_variance: float
    target_noise_multiplier: float
    n_expected: int
    dropout_margin: float
    l2_sensitivity: float  # one device's L2 sensitivity, integer units (inflated bound)
    dim: int = 1  # coordinates the noise covers (the bound for very large variances depends on it)

    @property
    def min_survivors(self) -> int:
        """Fewest surviving devices whose noise still meets the target."""
        return math.ceil((1.0 - self.dropout_margin) * self.n_expected - 1e-9)

    @property
    def target_sum_variance(self) -> float:
        """Total variance in the sum when exactly ``min_survivors`` devices survive."""
        return self.variance_present(self.min_survivors)

    def variance_present(self, survivors: int) -> float:
        """Variance per coordinate of all the noise in the sum of ``survivors`` devices' contributions."""
        if survivors < 0:
            raise ConfigError("survivors", f"must be >= 0, got {survivors!r}")
        return self.per_device_variance * survivors

    def variance_credited(self, survivors: int) -> float:
        """The part of :meth:`variance_present` the privacy claim relies on: every survivor but one."""
        if survivors < 0:
            raise ConfigError("survivors", f"must be >= 0, got {survivors!r}")
        return self.per_device_variance * max(survivors - 1, 0)

    def noise_multiplier_present(self, survivors: int) -> float:
        """The proven noise multiplier of the released sum (0.0 when fewer than two devices survive)."""
        return skellam_noise_multiplier(self.variance_credited(survivors), self.l2_sensitivity, self.dim)

    def gaussian_equivalent_multiplier(self, survivors: int) -> float:
        """√(variance present)/Δ₂: the multiplier of a Gaussian of equal variance — for comparison only."""
        return math.sqrt(self.variance_present(survivors)) / self.l2_sensitivity

    def meets_target(self, survivors: int) -> bool:
        return self.noise_multiplier_present(survivors) >= self.target_noise_multiplier * (1.0 - 1e-12)


def per_device_variance(sigma_sum: float, n_expected: int, dropout_margin: float) -> float:
    """Variance each device adds so that (1 − margin)·n_expected survivors give ``sigma_sum²`` in total.

    The plain equal-variance split; :func:`plan_device_noise` uses :func:`credited_shares` and the proven
    Skellam variance instead.
    """
    sigma_sum = _positive("sigma_sum", sigma_sum)
    if isinstance(n_expected, bool) or not isinstance(n_expected, (int, np.integer)) or n_expected < 1:
        raise ConfigError("n_expected", f"must be a positive integer, got {n_expected!r}")
    if not 0.0 <= float(dropout_margin) < 1.0:
        raise ConfigError("dropout_margin", f"must be in [0, 1), got {dropout_margin!r}")
    return sigma_sum * sigma_sum / ((1.0 - float(dropout_margin)) * int(n_expected))


def credited_shares(n_expected: int, dropout_margin: float) -> int:
    """Noise shares credited when exactly the planned minimum survives: min_survivors − 1 (at least 1).

    With a single expected device nothing can be credited; the share is then sized as if one were, and a
    round with one survivor is recorded with no privacy (multiplier 0, ε = ∞).
    """
    if isinstance(n_expected, bool) or not isinstance(n_expected, (int, np.integer)) or n_expected < 1:
        raise ConfigError("n_expected", f"must be a positive integer, got {n_expected!r}")
    if not 0.0 <= float(dropout_margin) < 1.0:
        raise ConfigError("dropout_margin", f"must be in [0, 1), got {dropout_margin!r}")
    survivors = math.ceil((1.0 - float(dropout_margin)) * int(n_expected) - 1e-9)
    return max(survivors - 1, 1)


def plan_device_noise(
    noise_multiplier: float,
    *,
    clip_norm: float,
    scale: float,
    dim: int,
    n_expected: int,
    dropout_margin: float,
    beta: float,
) -> DeviceNoisePlan:
    """Distributed-mode sizing: the credited Skellam variance whose *proven* multiplier is ≥ z.

    Every device and the aggregator compute the same plan from the round announcement (DP config, codec
    scale and dimension, expected participants); the computation is deterministic.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    if _dimension(dim) > MAX_DIM:
        raise ConfigError("dim", f"the Skellam bound covers at most {MAX_DIM} coordinates, got {dim}")
    sensitivity = inflated_l2_bound(clip_norm, scale, dim, beta)
    shares = credited_shares(n_expected, dropout_margin)
    credited = skellam_variance_for(z, sensitivity, _dimension(dim))
    # Round up by a hair so that (share × shares) is ≥ the credited variance in floating point too.
    variance = credited / shares * (1.0 + 1e-12)
    plan = DeviceNoisePlan(
        per_device_variance=variance,
        target_noise_multiplier=z,
        n_expected=int(n_expected),
        dropout_margin=float(dropout_margin),
        l2_sensitivity=sensitivity,
        dim=_dimension(dim),
    )
    if plan.min_survivors >= 2 and not plan.meets_target(plan.min_survivors):  # pragma: no cover - guard
        raise ConfigError("noise_multiplier", f"Skellam sizing missed the target {z}")
    return plan


def sum_noise_headroom(noise_multiplier: float, dropout_margin: float, min_roster: int) -> float:
    """Codec headroom (``CodecConfig.noise_multiplier``) for the noise of a distributed round's sum.

    The sum carries per-device variance × roster, i.e. std ≈ z·Δ₂·√(n / credited_shares(n)) (the Skellam
    sizing adds a relative 1/(6μ), covered by the 1.001 factor). The ratio is largest for small rosters,
    so this bounds it over every roster of at least ``min_roster`` devices.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    margin = float(dropout_margin)
    start = max(1, int(min_roster))
    # Beyond n = start + span, n / ((1 − m)·n − 1) decreases and bounds n / credited_shares(n).
    span = math.ceil(4.0 / (1.0 - margin)) + 4
    worst = max(n / credited_shares(n, margin) for n in range(start, start + span + 1))
    tail_n = start + span
    worst = max(worst, tail_n / max((1.0 - margin) * tail_n - 1.0, 1e-9))
    return z * math.sqrt(worst) * 1.001


# -- ε targets -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def noise_multiplier_for_target(
    epsilon: float,
    delta: float,
    rounds: int,
    sampling_q: float | None,
    *,
    value_discretization_interval: float = DEFAULT_DISCRETIZATION,
    rel_tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to ``rel_tol``) whose ``rounds`` rounds cost ≤ ``epsilon`` at ``delta``.

    Without sampling the answer is exact: T Gaussian releases with multiplier z are one Gaussian release
    with z/√T, so z = √T · σ(ε, δ) from the analytic Gaussian mechanism (Balle & Wang 2018). With Poisson
    sampling, bisection in log z on the same PLD computation the accountant uses, so
    ``PrivacyAccountant`` reports ε ≤ ``epsilon`` for these rounds.
    """
    epsilon = _positive("epsilon", epsilon)
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ConfigError("delta", f"must be in (0, 1), got {delta!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ConfigError("rounds", f"must be a positive integer, got {rounds!r}")
    q = normalise_sampling_q(sampling_q)
    if q is None:
        z = float(get_sigma_gaussian(epsilon, accounting_delta(delta))) * math.sqrt(int(rounds))
        # get_sigma_gaussian solves to 1e-12; nudge up so the analytic ε is never above target.
        while epsilon_for_constant_noise(z, rounds, delta, None) > epsilon:
            z *= 1.0 + 1e-9
        return z

    # Search on a 10x coarser PLD grid (≈10x faster, still pessimistic), then confirm on the fine grid.
    coarse = min(10.0 * value_discretization_interval, 1e-2)

    def eps(z: float, interval: float = coarse) -> float:
        return epsilon_for_constant_noise(z, rounds, delta, q, value_discretization_interval=interval)

    low, high = 0.25, 1.0
    while eps(high) > epsilon:
        low, high = high, high * 2.0
        if high > 1e6:
            raise ConfigError("epsilon", f"target {epsilon} is unreachable with any noise multiplier")
    while eps(low) <= epsilon and low > 1e-3:
        low, high = low / 2.0, low
    while high / low > 1.0 + rel_tol:
        middle = math.sqrt(low * high)
        if eps(middle) > epsilon:
            low = middle
        else:
            high = middle
    while eps(high, value_discretization_interval) > epsilon:
        high *= 1.0 + rel_tol
    logger.info(
        "calibrated noise multiplier %.5g for eps=%.4g delta=%.3g rounds=%d q=%s",
        high,
        epsilon,
        delta,
        rounds,
        q,
    )
    return high


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def skellam_rdp(
    variance: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    orders: tuple[int, ...] = SKELLAM_RDP_ORDERS,
) -> NDArray[np.float64]:
    """RDP ε(α) of one release of the Skellam mechanism (all quantities in integer units).

    Agarwal, Kairouz, Liu, NeurIPS 2021, Theorem 3.5 / Corollary 3.6: for noise of total variance μ per
    coordinate (Poisson(μ/2) − Poisson(μ/2)), integer α > 1::

        ε(α) ≤ α Δ₂² / (2μ) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4 μ²),  3 Δ₁ / (2μ) )

    The first term is the Gaussian mechanism's RDP with the same variance; the second is the price of
    discreteness, which vanishes as μ grows.
    """
    mu = _positive("variance", variance)
    l2 = _positive("l2_sensitivity", l2_sensitivity)
    l1 = _positive("l1_sensitivity", l1_sensitivity)
    alpha = np.asarray(orders, dtype=np.float64)
    surcharge = np.minimum(
        ((2.0 * alpha - 1.0) * l2 * l2 + 6.0 * l1) / (4.0 * mu * mu), 3.0 * l1 / (2.0 * mu)
    )
    return alpha * l2 * l2 / (2.0 * mu) + surcharge


def _poisson_subsampled_rdp(order: int, q: float, rdp_at: NDArray[np.float64]) -> float:
    """Zhu & Wang, "Poisson Subsampled Rényi Differential Privacy", ICML 2019, Thm 6 (general upper bound).

    ``rdp_at[l]`` is the un-sampled mechanism's RDP at integer order l (index = order).
    """
    terms = [0.0, rdp_at[2]]
    weights = [
        (1.0 - q) ** (order - 1) * (order * q - q + 1.0),
        math.comb(order, 2) * q * q * (1.0 - q) ** (order - 2),
    ]
    for ell in range(3, order + 1):
        terms.append(
            (ell - 1) * rdp_at[ell]
            + _log_comb(order, ell)
            + (order - ell) * math.log1p(-q)
            + ell * math.log(q)
        )
        weights.append(3.0)
    exponents = np.asarray(terms) + np.log(np.asarray(weights))
    peak = float(np.max(exponents))
    return (peak + math.log(float(np.sum(np.exp(exponents - peak))))) / (order - 1)


def skellam_epsilon(
    variance: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    rounds: int,
    delta: float,
    sampling_q: float | None = None,
    *,
    orders: tuple[int, ...] = SKELLAM_RDP_ORDERS,
) -> float:
    """ε at ``delta`` of ``rounds`` Skellam releases of total variance ``variance`` — the rigorous bound.

    RDP of :func:`skellam_rdp` (Poisson-amplified by Zhu & Wang 2019, Thm 6, when ``sampling_q`` < 1),
    composed additively and converted to (ε, δ) with dp-accounting's RDP conversion. Use it to check the
    Gaussian-equivalent ε that :class:`shared.dp.accounting.PrivacyAccountant` reports (docs/privacy.md).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ConfigError("rounds", f"must be a positive integer, got {rounds!r}")
    q = normalise_sampling_q(sampling_q)
    base = skellam_rdp(variance, l2_sensitivity, l1_sensitivity, orders)
    if q is not None:
        top = max(orders)
        full = np.zeros(top + 1)
        full[2:] = skellam_rdp(variance, l2_sensitivity, l1_sensitivity, tuple(range(2, top + 1)))
        sampled = np.array([_poisson_subsampled_rdp(int(a), q, full) for a in orders])
        base = np.minimum(base, sampled)
    eps, _order = rdp_compute_epsilon(list(orders), list(base * int(rounds)), float(delta))
    return float(eps)


def device_noise_plan(
    dp: _HasDropoutMargin,
    noise_multiplier: float,
    codec: CodecConfig,
    encoder: UpdateEncoder,
    roster_size: int,
) -> DeviceNoisePlan:
    """The plan every device and the aggregator derive from one round's announcement and roster.

    ``codec`` is the round's :class:`shared.codec.CodecConfig` and ``encoder`` its
    :class:`shared.codec.UpdateEncoder`: noise covers the encoder's data coordinates at its scale. The
    codec rounds unconditionally, so the worst-case sensitivity bound applies (``beta = 0``).
    """
    return plan_device_noise(
        noise_multiplier,
        clip_norm=codec.clip_norm,
        scale=encoder.scale,
        dim=encoder.data_length,
        n_expected=roster_size,
        dropout_margin=dp.dropout_margin,
        beta=0.0,
    )
