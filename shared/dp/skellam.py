"""A proven privacy bound for the Skellam mechanism: the Gaussian mechanism that dominates it.

The released sum of a distributed round carries, in every coordinate, the sum of the surviving devices'
Skellam shares: one symmetric Skellam variable of variance μ (integer units). A device changes the integer
sum by a vector v with ‖v‖₂ ≤ Δ₂ (the inflated sensitivity of the codec's rounding). This module finds a
number ``m₁(μ)`` — the *Gaussian slope* of the Skellam distribution — such that the d-dimensional release
is, up to a total-variation slack below 1e-200 per coordinate, a post-processing of the Gaussian mechanism
with noise multiplier ``z = 1 / (m₁(μ) · Δ₂)``. The accountant then composes that Gaussian mechanism with
the PLD machinery it already uses for central DP, so Poisson sampling, dropouts and composition are
handled exactly as for the Gaussian, and the ε it reports is a proven upper bound for the Skellam
mechanism that ran. ``m₁(μ)·√μ`` is 1 + 1/(6μ) to within rounding (about 1.0002 at μ = 10³), so the
proven multiplier is the equal-variance Gaussian one shrunk by that factor.

The argument (docs/privacy.md, "The theorem"), in short. Let F be the Skellam CDF and
g = Φ⁻¹∘F its *Gaussianised* CDF; m₁ = max over integers x of g(x) − g(x−1).

1. Skellam is discrete log-concave (a convolution of two Poisson pmfs), so the shift pair
   (Sk(μ), Sk(μ)+k) has monotone likelihood ratio and its optimal tests are thresholds. Its trade-off
   curve has vertices (P[X ≥ t], F(t−k−1)); the Gaussian trade-off curve G_m (Dong, Roth, Su 2019) is
   convex, so the pair is (k·m₁)-GDP as soon as g(t−1) − g(t−k−1) ≤ k·m₁ at every vertex — a sum of k
   one-step increments.
2. GDP composes exactly over coordinates: a shift vector v gives m₁·‖v‖₂ ≤ m₁·Δ₂ (Dong, Roth, Su,
   Corollary 3.3). GDP is Blackwell dominance by a Gaussian pair, which survives mixing over the codec's
   random rounding, Poisson subsampling (the mixture is a garbling of the Gaussian mixture) and adaptive
   composition over rounds, so each round is accounted as a Poisson-subsampled Gaussian with
   z = 1/(m₁Δ₂).
3. Infinitely many increments cannot be computed. We compute them on a window [−B, B] whose tail mass
   beyond B − K is τ ≤ 1e-200 (K ≥ the largest coordinate shift, here ⌈Δ₂⌉). Vertices outside the window
   have α ≤ τ or α ≥ 1 − τ, so the pair is exactly G_m(α + τ)-DP. That trade-off function is realised by a
   Gaussian pair with its top τ-quantile relabelled, which is within total variation τ (and
   Φ̄(Φ̄⁻¹(τ) − K·m₁) on the other side) of the Gaussian pair itself. Those distances add up over
   coordinates and rounds into an additive δ slack, which the accountant reserves (see
   :func:`shared.dp.accounting.tail_slack_ok`).

Numerics: the pmf is ``scipy.special.ive(x, μ)`` (Sk(μ) has pmf e^(−μ) I_x(μ)); the computed mass is
checked to be 1 within 1e-12, and m₁ is raised by an absolute margin that covers the float error of the
tail sums. Less noise is never better for privacy (adding independent noise is post-processing), so
variances are rounded *down* to a fine grid before computing, and results are cached per grid point.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from scipy import special

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

#: Per-coordinate total-variation slack of the tail argument, each side (τ and the shifted tail).
TAIL_TV = 1e-200
#: The Gaussian quantile whose upper tail is ``TAIL_TV``: Φ̄(TAIL_QUANTILE) ≤ TAIL_TV.
TAIL_QUANTILE = 30.25
#: Largest dimension the accountant's reserved δ slack covers (see ``accounting.tail_slack_ok``).
MAX_DIM = 1 << 40
#: Largest variance whose pmf is computed directly (``scipy.special.ive`` is exact well beyond it);
#: larger ones are split into N equal parts (:func:`skellam_noise_multiplier`).
MAX_COMPUTED_VARIANCE = 2.0**30
#: Largest pmf support computed (points on one side); beyond this a variance is refused.
MAX_SUPPORT = 4_000_000
#: Variances are rounded down to this many grid points per doubling (relative step ≈ 1.7e-4).
VARIANCE_GRID = 4096
#: Relative float error assumed per pmf value from ``scipy.special.ive``.
_PMF_REL_ERROR = 1e-13
_EPS = float(np.finfo(np.float64).eps)


def variance_grid_floor(variance: float) -> float:
    """The largest grid variance ≤ ``variance`` (pessimistic: less noise)."""
    exponent = math.floor(math.log2(variance) * VARIANCE_GRID) / VARIANCE_GRID
    key: float = 2.0**exponent
    while key > variance:  # guard against rounding in log2/pow
        exponent -= 1.0 / VARIANCE_GRID
        key = 2.0**exponent
    return key


def variance_grid_ceil(variance: float) -> float:
    """The smallest grid variance ≥ ``variance``."""
    exponent = math.ceil(math.log2(variance) * VARIANCE_GRID) / VARIANCE_GRID
    key: float = 2.0**exponent
    while key < variance:
        exponent += 1.0 / VARIANCE_GRID
        key = 2.0**exponent
    return key


def _shift_key(max_shift: float) -> int:
    """⌈max_shift⌉ rounded up to 5 significant bits (≤ 6.25% more; a larger window is still valid)."""
    shift = max(1, math.ceil(max_shift))
    step = 1 << max(0, shift.bit_length() - 5)
    return -(-shift // step) * step


def _no_certificate(variance: float, max_shift: int, why: str) -> float:
    logger.warning(
        "skellam bound: no certificate for variance %.6g and shifts up to %d (%s); no privacy is claimed",
        variance, max_shift, why,
    )  # fmt: skip
    return 0.0


@functools.lru_cache(maxsize=4096)
def _gaussian_slope(variance: float, max_shift: int) -> float:
    """m₁ for Sk(``variance``) on the window needed by shifts up to ``max_shift``; 0.0 if uncertifiable.

    ``variance`` must already be a grid point. Returns 0.0 (no certificate, so no privacy is claimed:
    the round counts as ε = ∞) when the tail condition would need probabilities below double precision
    — only for noise so small relative to the sensitivity (z ≲ 0.3) that ε is very large anyway — or if
    a numerical check fails.
    """
    sigma = math.sqrt(variance)
    # The window must reach the Gaussian quantile c ≥ TAIL_QUANTILE + K·m₁, with m₁ ≈ 1/σ.
    # (m₁·σ ≈ 1 + 1/(6μ); the factor below over-estimates it for every μ ≥ 0.1.)
    needed_quantile = TAIL_QUANTILE + (1.01 + 1.0 / (3.0 * variance)) * max_shift / sigma + 0.05
    log_tail = float(special.log_ndtr(-needed_quantile))
    if log_tail < -700.0:  # below the smallest double
        return _no_certificate(variance, max_shift, "noise multiplier below ~0.3")
    support = int(max_shift + 16 + (needed_quantile + 12.0) * sigma)
    while True:
        if support > MAX_SUPPORT:
            raise ConfigError(
                "variance", f"{variance:.4g} is too large for the Skellam bound's exact pmf (use fewer bits)"
            )
        x = np.arange(support + 1, dtype=np.float64)
        pmf = special.ive(x, variance)
        last = float(pmf[-1])
        if last == 0.0 or math.log(last) < log_tail - 30.0:
            break
        support *= 2
    # Tail beyond the computed support: log-concave ratios decrease, so it is at most geometric.
    ratio = float(pmf[-1] / pmf[-2]) if pmf[-2] > 0 else 0.0
    beyond = float(pmf[-1]) * ratio / (1.0 - ratio) if ratio < 1.0 else math.inf
    survival = np.cumsum(pmf[::-1])[::-1] + beyond  # survival[x] = P(X ≥ x), x ≥ 0
    total = 2.0 * float(survival[1]) + float(pmf[0])
    if not abs(total - 1.0) <= 1e-12:
        return _no_certificate(variance, max_shift, f"pmf sums to {total!r}, not 1")
    with np.errstate(divide="ignore"):
        log_survival = np.log(survival)
    inside = np.flatnonzero(log_survival <= log_tail)
    b0 = int(inside[0]) if inside.size else survival.size
    window = b0 + max_shift  # B: increments are needed for x in [-B, B]
    if window + 2 >= survival.size:
        return _no_certificate(variance, max_shift, "the window exceeds the computed support")
    if not survival[window + 1] >= 1e-300:  # the window's far end underflows double precision
        return _no_certificate(variance, max_shift, "noise multiplier below ~0.3")
    t = special.ndtri(survival[1 : window + 2])  # t[j] = Φ⁻¹(P(X ≥ j + 1))
    increments = t[:-1] - t[1:]  # g(x) − g(x−1) for x = 1..B (symmetry covers x ≤ 0)
    slope = max(-2.0 * float(t[0]), float(np.max(increments)))
    # Float error of the tail sums (sequential cumsum) and of ive, as an absolute error on Φ⁻¹ values.
    error = 10.0 * (survival.size * _EPS + _PMF_REL_ERROR) + 1e-13
    slope += 2.0 * error
    # The tail conditions: τ = P(X ≥ B0 + 2) ≤ TAIL_TV and Φ̄(Φ̄⁻¹(τ) − K·m₁) ≤ TAIL_TV.
    quantile = -float(special.ndtri(survival[b0 + 2])) if survival[b0 + 2] > 0 else math.inf
    if survival[b0 + 2] > TAIL_TV or quantile - max_shift * slope < TAIL_QUANTILE:
        return _no_certificate(variance, max_shift, "tail condition not met")
    return slope


def skellam_gaussian_slope(variance: float, max_shift: float) -> float:
    """m₁ for total per-coordinate Skellam variance ``variance`` and coordinate shifts ≤ ``max_shift``.

    Pessimistic on both inputs: the variance is rounded down to the grid, the shift up (5 significant bits).
    0.0 means "no certificate" (see :func:`_gaussian_slope`).
    """
    variance = float(variance)
    if not math.isfinite(variance) or variance <= 0.0:
        raise ConfigError("variance", f"must be a finite number > 0, got {variance!r}")
    shift = float(max_shift)
    if not math.isfinite(shift) or shift <= 0.0:
        raise ConfigError("max_shift", f"must be a finite number > 0, got {max_shift!r}")
    return _gaussian_slope(variance_grid_floor(variance), _shift_key(shift))


def _parts(variance: float) -> int:
    """Smallest power of two N with variance / N ≤ MAX_COMPUTED_VARIANCE."""
    parts = 1
    while variance / parts > MAX_COMPUTED_VARIANCE:
        parts *= 2
    return parts


def skellam_noise_multiplier(variance: float, l2_sensitivity: float, dim: int) -> float:
    """The proven noise multiplier of one Skellam release: z = 1 / (m₁(μ) · Δ₂).

    The release is dominated (up to the reserved tail slack) by a Gaussian mechanism with this multiplier,
    so the accountant may treat it as one. ``variance == 0`` (no noise reached the sum) gives 0.0: no
    privacy. Always ≤ the equal-variance Gaussian multiplier √μ/Δ₂ (by about 1/(6μ), relatively).

    Very large variances (above 2³⁰, beyond what the exact pmf is computed for) are split: Sk(μ) is the sum
    of N i.i.d. Sk(μ/N), so the release is a post-processing of N·``dim`` coordinates in which a shift k
    is spread as evenly as possible (parts differ by at most 1, Σ k_j² = k²/N + r(N−r)/N with r = k mod N).
    That gives z = 1 / (m₁(μ/N) · √(Δ₂²/N + min(dim·N/4, Δ₁))), Δ₁ = Δ₂·min(√dim, Δ₂) — a relative cost of
    about dim·N/(4Δ₂²), negligible where such variances occur (large codec scales, so Δ₂² ≫ dim).
    """
    l2 = float(l2_sensitivity)
    if not math.isfinite(l2) or l2 <= 0.0:
        raise ConfigError("l2_sensitivity", f"must be a finite number > 0, got {l2_sensitivity!r}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ConfigError("dim", f"must be a positive integer, got {dim!r}")
    if float(variance) == 0.0:
        return 0.0
    mu = variance_grid_floor(float(variance)) if float(variance) > 0 else float(variance)
    parts = _parts(mu)
    if int(dim) * parts > MAX_DIM:
        raise ConfigError("dim", f"the Skellam bound covers at most {MAX_DIM} coordinates, got {dim}x{parts}")
    if parts == 1:
        slope = skellam_gaussian_slope(mu, l2)  # a coordinate moves by at most ‖v‖₂ ≤ Δ₂
        return 0.0 if slope == 0.0 else 1.0 / (slope * l2)
    slope = skellam_gaussian_slope(mu / parts, math.ceil(l2 / parts))
    l1 = l2 * min(math.sqrt(int(dim)), l2)
    spread = min(int(dim) * parts / 4.0, l1)
    return 0.0 if slope == 0.0 else 1.0 / (slope * math.sqrt(l2 * l2 / parts + spread))


def skellam_variance_for(noise_multiplier: float, l2_sensitivity: float, dim: int) -> float:
    """Smallest grid variance μ whose proven multiplier :func:`skellam_noise_multiplier` is ≥ the target.

    Deterministic, so devices and the aggregator size and credit the same noise.
    """
    z = float(noise_multiplier)
    if not math.isfinite(z) or z <= 0.0:
        raise ConfigError("noise_multiplier", f"must be a finite number > 0, got {noise_multiplier!r}")
    l2 = float(l2_sensitivity)
    variance = variance_grid_ceil((z * l2) ** 2)
    for _ in range(64):
        proven = skellam_noise_multiplier(variance, l2, dim)
        if proven >= z:
            return variance
        # ≈ Gaussian: the multiplier grows like √μ; step a little past the estimate, then snap to grid.
        factor = (z / proven) ** 2 if proven > 0.0 else 4.0
        variance = variance_grid_ceil(variance * factor * (1.0 + 1.0 / VARIANCE_GRID))
    raise ConfigError("noise_multiplier", f"could not size Skellam noise for multiplier {z!r}")
