"""The proven Skellam bound: checked against brute-force privacy computations on small cases.

The brute force works directly on the Skellam pmf (Poisson(μ/2) − Poisson(μ/2), built here by convolving
two Poisson pmfs, independently of the module's Bessel-function route): the exact privacy-loss
distribution of the shifted pair, Poisson-subsampled as the accountant assumes, composed over rounds by
exact convolution of loss atoms, and ε read off the hockey-stick divergence in both directions. The
accountant's ε for the same release must be at least that, and not wildly more.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from shared.dp import PrivacyAccountant, plan_device_noise
from shared.dp.accounting import tail_slack_ok
from shared.dp.skellam import (
    MAX_COMPUTED_VARIANCE,
    TAIL_QUANTILE,
    TAIL_TV,
    skellam_gaussian_slope,
    skellam_noise_multiplier,
    skellam_variance_for,
    variance_grid_floor,
)
from shared.errors import ConfigError

DELTA = 1e-5


def skellam_pmf(variance: float, mass_floor: float = 1e-30) -> tuple[np.ndarray, np.ndarray]:
    """Support and pmf of Sk(variance) by convolving Poisson(variance/2) with its mirror image."""
    lam = variance / 2.0
    top = int(lam + 12.0 * math.sqrt(lam) + 2.5 * math.log(1.0 / mass_floor)) + 2
    poisson = stats.poisson.pmf(np.arange(top + 1), lam)
    pmf = np.convolve(poisson, poisson[::-1])  # index i ↔ value i − top
    keep = pmf > mass_floor
    support = np.arange(-top, top + 1)[keep]
    return support, pmf[keep]


def _atoms(frm: np.ndarray, to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Privacy-loss atoms log(to/from) with their mass under ``to`` (``to`` ≪ ``from`` on a common grid)."""
    mask = to > 0
    with np.errstate(divide="ignore"):  # to > 0 = from: an infinite loss atom, counted in full by δ
        return np.log(to[mask]) - np.log(frm[mask]), to[mask]


def _compose(atoms: tuple[np.ndarray, np.ndarray], rounds: int) -> tuple[np.ndarray, np.ndarray]:
    loss, mass = atoms
    out_loss, out_mass = loss, mass
    for _ in range(rounds - 1):
        out_loss = (out_loss[:, None] + loss[None, :]).ravel()
        out_mass = (out_mass[:, None] * mass[None, :]).ravel()
        key, inverse = np.unique(np.round(out_loss, 12), return_inverse=True)
        out_mass = np.bincount(inverse, weights=out_mass)
        out_loss = key
    return out_loss, out_mass


def _epsilon(atoms: tuple[np.ndarray, np.ndarray], delta: float) -> float:
    loss, mass = atoms

    def hockey(eps: float) -> float:
        return float(np.sum(mass * np.maximum(0.0, -np.expm1(eps - loss))))

    if hockey(0.0) <= delta:
        return 0.0
    low, high = 0.0, 60.0
    for _ in range(80):
        middle = (low + high) / 2.0
        low, high = (middle, high) if hockey(middle) > delta else (low, middle)
    return high


def exact_epsilon(p: np.ndarray, q_shifted: np.ndarray, sampling_q: float | None, rounds: int) -> float:
    """ε of ``rounds`` releases of the pair (p, shifted), Poisson-subsampled when ``sampling_q`` is set."""
    shifted = q_shifted if sampling_q is None else (1.0 - sampling_q) * p + sampling_q * q_shifted
    return max(
        _epsilon(_compose(_atoms(p, shifted), rounds), DELTA),
        _epsilon(_compose(_atoms(shifted, p), rounds), DELTA),
    )


def accountant_epsilon(
    variance: float, l2: float, dim: int, sampling_q: float | None, rounds: int
) -> tuple[float, float]:
    z = skellam_noise_multiplier(variance, l2, dim)
    accountant = PrivacyAccountant(DELTA, sampling_q)
    for _ in range(rounds):
        accountant.record_round(z)
    return accountant.epsilon(), z


def _shifted_pair(variance: float, shift: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Product pmf of Sk(variance)^d and of its shift by the integer vector ``shift``, on a common grid."""
    _support, pmf = skellam_pmf(variance)
    pad = max(abs(k) for k in shift)
    grid = np.zeros(pmf.size + 2 * pad)
    grid[pad : pad + pmf.size] = pmf
    base, moved = np.array([1.0]), np.array([1.0])
    for k in shift:
        base = np.multiply.outer(base, grid).ravel()
        moved = np.multiply.outer(moved, np.roll(grid, k)).ravel()
    return base, moved


@pytest.mark.parametrize(
    ("variance", "shift", "sampling_q", "rounds"),
    [
        (3.0, (1,), None, 1),
        (3.0, (1,), None, 3),
        (20.0, (2,), 0.3, 3),
        (50.0, (1,), 0.1, 3),
        (8.0, (3,), None, 2),
        (8.0, (2, 1), None, 1),
        (8.0, (2, 1), 0.5, 1),
        (6.0, (1, 1, 1), 0.2, 1),
    ],
)
def test_bound_holds_and_is_tight_on_small_cases(
    variance: float, shift: tuple[int, ...], sampling_q: float | None, rounds: int
) -> None:
    p, moved = _shifted_pair(variance, shift)
    exact = exact_epsilon(p, moved, sampling_q, rounds)
    l2 = math.sqrt(sum(k * k for k in shift))
    bound, z = accountant_epsilon(variance, l2, len(shift), sampling_q, rounds)
    assert z < math.sqrt(variance) / l2  # a hair below the equal-variance Gaussian multiplier
    assert exact > 0.0
    assert bound >= exact
    assert bound <= exact * (1.0 + 2.0 / variance) + 0.01  # discreteness costs ~1/μ, not more


@settings(max_examples=15, deadline=None)
@given(
    variance=st.floats(min_value=2.0, max_value=60.0),
    shift=st.lists(st.integers(min_value=-3, max_value=3).filter(bool), min_size=1, max_size=2),
    sampling_q=st.sampled_from([None, 0.05, 0.3, 0.7]),
    rounds=st.integers(min_value=1, max_value=2),
)
def test_bound_is_an_upper_bound_property(
    variance: float, shift: list[int], sampling_q: float | None, rounds: int
) -> None:
    """Any small Skellam release (shift vector, sampling, one or two rounds): accountant ≥ exact.

    The looseness grows with discreteness, about 4/μ relatively (a factor 2 at μ = 4, 6% at μ = 40, in a
    scan of shifts up to 3 and q in {0.05, 0.3, 0.7}); the upper check allows 5/μ.
    """
    rounds = rounds if len(shift) == 1 else 1  # keep the brute-force convolution small
    p, moved = _shifted_pair(variance, tuple(shift))
    exact = exact_epsilon(p, moved, sampling_q, rounds)
    l2 = math.sqrt(sum(k * k for k in shift))
    bound, _z = accountant_epsilon(variance, l2, len(shift), sampling_q, rounds)
    assert bound >= exact
    assert bound <= exact * (1.0 + 5.0 / variance) + 0.02


def test_slope_matches_an_independent_computation() -> None:
    """m₁ = max one-step increment of Φ⁻¹(F), from the Poisson-convolution pmf, within float error."""
    for variance in (4.0, 32.0, 512.0):  # grid points (powers of two)
        support, pmf = skellam_pmf(variance, mass_floor=1e-300)
        cdf_low = np.cumsum(pmf)  # F(x) for the left half
        survival = np.cumsum(pmf[::-1])[::-1]  # P(X ≥ x)
        # g(x) = Φ⁻¹(F(x)); use the accurate side of the distribution for each x.
        upper = np.concatenate([survival[1:], [0.0]])  # P(X > x)
        g = np.where(support < 0, special.ndtri(cdf_low), -special.ndtri(np.maximum(upper, 1e-310)))
        inside = np.abs(support) <= 25 * math.sqrt(variance)
        increments = np.diff(g)[inside[1:] & inside[:-1]]
        reference = float(np.max(increments))
        slope = skellam_gaussian_slope(variance, 1)
        assert slope >= reference
        assert slope == pytest.approx(reference, rel=1e-6)
        assert 1.0 <= slope * math.sqrt(variance) <= 1.0 + 1.0 / (3.0 * variance)


def test_slope_approaches_the_gaussian_and_is_pessimistic_about_the_grid() -> None:
    for variance in (1e3, 1e5, 1e7):
        factor = skellam_gaussian_slope(variance, 100) * math.sqrt(variance_grid_floor(variance))
        assert 1.0 <= factor <= 1.0 + 1.0 / (3.0 * variance) + 1e-5  # + the float-error margin
    assert variance_grid_floor(1000.0) <= 1000.0 <= variance_grid_floor(1000.0) * 1.0002
    # More noise never gives a smaller proven multiplier.
    values = [skellam_noise_multiplier(v, 300.0, 1000) for v in (9e4, 1e5, 2e5, 4e5)]
    assert values == sorted(values)


def test_variance_for_meets_the_target_with_little_waste() -> None:
    for z, l2 in ((0.5, 40.0), (1.0, 1040.0), (2.0, 5.0)):
        variance = skellam_variance_for(z, l2, 1000)
        assert skellam_noise_multiplier(variance, l2, 1000) >= z
        assert variance <= (z * l2) ** 2 * (1.0 + 2.0 / (z * l2) ** 2) * 1.0005


def test_very_large_variances_are_split_and_stay_close_to_gaussian() -> None:
    dim, l2 = 20_000, 5.2e4
    below = skellam_noise_multiplier(MAX_COMPUTED_VARIANCE * 0.999, l2, dim)
    above = skellam_noise_multiplier(MAX_COMPUTED_VARIANCE * 2.5, l2, dim)
    for variance, proven in ((MAX_COMPUTED_VARIANCE * 0.999, below), (MAX_COMPUTED_VARIANCE * 2.5, above)):
        gaussian = math.sqrt(variance) / l2
        assert 0.999 * gaussian <= proven <= gaussian
    with pytest.raises(ConfigError):
        skellam_noise_multiplier(1e6, 1000.0, 0)


def test_zero_noise_and_uncertifiable_noise_claim_nothing() -> None:
    assert skellam_noise_multiplier(0.0, 10.0, 10) == 0.0
    # Noise far below the sensitivity (z ~ 0.01): the tail argument needs probabilities below doubles.
    assert skellam_noise_multiplier(1.0, 100.0, 10) == 0.0


def test_plan_records_the_proven_figure_and_the_budget_stop_uses_it() -> None:
    """A coarse codec (small μ): the proven multiplier is visibly below the Gaussian-equivalent one, and a
    budget the Gaussian-equivalent accounting would still allow is refused."""
    plan = plan_device_noise(
        0.8, clip_norm=1.0, scale=2.0, dim=1, n_expected=10, dropout_margin=0.0, beta=0.0
    )  # Δ₂ = 3: μ ≈ 6
    proven = plan.noise_multiplier_present(10)
    gaussian = plan.gaussian_equivalent_multiplier(10)
    assert 0.8 <= proven < gaussian * 0.93
    accountant = PrivacyAccountant(DELTA, 0.2)
    optimistic = PrivacyAccountant(DELTA, 0.2)
    for _ in range(20):
        accountant.record_round(proven)
        optimistic.record_round(gaussian)
    budget = (accountant.epsilon_if_next(proven) + optimistic.epsilon_if_next(gaussian)) / 2.0
    assert optimistic.epsilon_if_next(gaussian) < budget < accountant.epsilon_if_next(proven)
    assert accountant.would_exceed(budget, proven)
    assert not optimistic.would_exceed(budget, gaussian)


def test_tail_slack_reserve() -> None:
    assert special.log_ndtr(-TAIL_QUANTILE) <= math.log(TAIL_TV)
    assert tail_slack_ok(60.0, 1e-12, 10**6)
    assert not tail_slack_ok(2000.0, 1e-5, 10)


def test_calibration_does_not_import_config() -> None:
    """config → calibration → accounting → skellam: one direction only (no import cycle)."""
    root = Path(__file__).resolve().parents[2] / "shared" / "dp"
    for name in ("calibration.py", "accounting.py", "skellam.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
        }
        assert "shared.dp.config" not in imported, name
