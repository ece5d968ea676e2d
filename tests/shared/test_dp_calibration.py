"""Noise sizing: inflated sensitivity, per-device shares, target calibration, the Skellam RDP bound."""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest

from shared.dp.accounting import PrivacyAccountant, epsilon_for_constant_noise
from shared.dp.calibration import (
    SKELLAM_RDP_ORDERS,
    central_noise_std,
    credited_shares,
    inflated_l1_bound,
    inflated_l2_bound,
    noise_multiplier_for_target,
    per_device_variance,
    plan_device_noise,
    skellam_epsilon,
    sum_noise_headroom,
)
from shared.dp.skellam import skellam_noise_multiplier, skellam_variance_for
from shared.errors import ConfigError


def test_inflated_l2_bound_formula() -> None:
    c, s, d, beta = 1.5, 100.0, 10_000, math.exp(-0.5)
    cs = c * s
    expected = math.sqrt(cs**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (cs + math.sqrt(d) / 2))
    assert inflated_l2_bound(c, s, d, beta) == pytest.approx(min(cs + math.sqrt(d), expected))
    assert inflated_l2_bound(c, s, d, 0.0) == pytest.approx(cs + math.sqrt(d))
    assert cs < inflated_l2_bound(c, s, d, beta) < cs + math.sqrt(d)
    # Tiny scale: the worst-case term is the smaller one and wins.
    assert inflated_l2_bound(1.0, 0.01, 4, 1e-9) == pytest.approx(0.01 + 2.0)
    with pytest.raises(ConfigError) as error:
        inflated_l2_bound(1.0, 1.0, 0, 0.5)
    assert error.value.field == "dim"


def test_inflated_l1_bound() -> None:
    assert inflated_l1_bound(10.0, 4) == pytest.approx(20.0)  # sqrt(d) bound
    assert inflated_l1_bound(3.0, 10_000) == pytest.approx(9.0)  # integrality bound


def test_per_device_share_and_noise_present() -> None:
    assert per_device_variance(30.0, 100, 0.1) * 0.9 * 100 == pytest.approx(900.0)
    plan = plan_device_noise(
        1.1, clip_norm=1.0, scale=200.0, dim=4096, n_expected=50, dropout_margin=0.2, beta=math.exp(-0.5)
    )
    assert plan.min_survivors == 40
    assert credited_shares(50, 0.2) == 39  # every survivor but the device whose privacy is measured
    # The credited noise (39 shares) is sized so its *proven* multiplier meets the target...
    assert plan.variance_credited(40) == pytest.approx(39 * plan.per_device_variance)
    assert plan.variance_credited(40) >= skellam_variance_for(1.1, plan.l2_sensitivity, 4096)
    assert plan.meets_target(40) and not plan.meets_target(39)
    assert 1.1 <= plan.noise_multiplier_present(40) <= 1.1 * 1.001
    assert plan.noise_multiplier_present(50) == pytest.approx(
        skellam_noise_multiplier(49 * plan.per_device_variance, plan.l2_sensitivity, 4096)
    )
    # ...which is a hair below the equal-variance Gaussian figure (and further below the variance present).
    assert plan.noise_multiplier_present(40) < math.sqrt(plan.variance_credited(40)) / plan.l2_sensitivity
    assert plan.noise_multiplier_present(40) < plan.gaussian_equivalent_multiplier(40)
    assert plan.noise_multiplier_present(1) == 0.0  # a lone survivor's sum is credited with no noise
    with pytest.raises(ConfigError) as error:
        per_device_variance(1.0, 10, 1.0)
    assert error.value.field == "dropout_margin"


@pytest.mark.parametrize(("margin", "min_roster"), [(0.0, 2), (0.1, 4), (0.3, 10), (0.1, 100)])
def test_sum_noise_headroom_covers_every_roster(margin: float, min_roster: int) -> None:
    """The codec's headroom must cover the summed noise std for any roster the round may get."""
    z = 1.0
    headroom = sum_noise_headroom(z, margin, min_roster)
    for roster in range(min_roster, min_roster + 400, 7):
        plan = plan_device_noise(
            z, clip_norm=1.0, scale=300.0, dim=1000, n_expected=roster, dropout_margin=margin, beta=0.0
        )
        assert math.sqrt(plan.variance_present(roster)) <= headroom * plan.l2_sensitivity
    assert headroom <= z * 1.5


def test_central_noise_std() -> None:
    assert central_noise_std(1.2, 0.5) == pytest.approx(0.6)
    quantised = central_noise_std(1.2, 0.5, scale=100.0, dim=1000, beta=math.exp(-0.5))
    assert quantised == pytest.approx(1.2 * inflated_l2_bound(0.5, 100.0, 1000, math.exp(-0.5)) / 100.0)
    assert quantised > 0.6


@pytest.mark.parametrize(
    ("epsilon", "rounds", "sampling_q"), [(1.0, 100, 0.01), (4.0, 50, None), (2.0, 10, 1.0)]
)
def test_calibration_inverse(epsilon: float, rounds: int, sampling_q: float | None) -> None:
    z = noise_multiplier_for_target(epsilon, 1e-5, rounds, sampling_q)
    achieved = epsilon_for_constant_noise(z, rounds, 1e-5, sampling_q)
    assert achieved <= epsilon
    assert achieved >= 0.97 * epsilon  # close: not wastefully noisy
    accountant = PrivacyAccountant(1e-5, sampling_q)
    for _ in range(rounds):
        accountant.record_round(z)
    assert accountant.epsilon() <= epsilon


def test_calibration_rejects_bad_targets() -> None:
    with pytest.raises(ConfigError) as error:
        noise_multiplier_for_target(-1.0, 1e-5, 10, None)
    assert error.value.field == "epsilon"
    with pytest.raises(ConfigError) as error:
        noise_multiplier_for_target(1.0, 1e-5, 0, None)
    assert error.value.field == "rounds"


def test_skellam_bound_above_gaussian_and_converges() -> None:
    orders = list(SKELLAM_RDP_ORDERS)
    for l2 in (50.0, 5_000.0):
        z = 1.0
        variance = (z * l2) ** 2
        skellam = skellam_epsilon(variance, l2, inflated_l1_bound(l2, 10_000), 100, 1e-5, None)
        gaussian = dpa.rdp.RdpAccountant(orders)
        gaussian.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), 100))
        reference = gaussian.get_epsilon(1e-5)
        assert skellam >= reference
        if l2 > 1000:
            assert skellam <= reference * 1.01  # large μ: Skellam ≈ Gaussian of equal variance
    sampled = skellam_epsilon(4e6, 1000.0, 1e6, 100, 1e-5, 0.01)
    unsampled = skellam_epsilon(4e6, 1000.0, 1e6, 100, 1e-5, None)
    assert 0.0 < sampled < unsampled
