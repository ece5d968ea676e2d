"""Noise sizing: inflated sensitivity, per-device shares, target calibration, the Skellam RDP bound."""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest

from shared.dp.accounting import PrivacyAccountant, epsilon_for_constant_noise
from shared.dp.calibration import (
    SKELLAM_RDP_ORDERS,
    central_noise_std,
    inflated_l1_bound,
    inflated_l2_bound,
    noise_multiplier_for_target,
    per_device_variance,
    plan_device_noise,
    skellam_epsilon,
)
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
    assert plan.target_sum_variance == pytest.approx((1.1 * plan.l2_sensitivity) ** 2)
    assert plan.min_survivors == 40
    assert plan.meets_target(40) and not plan.meets_target(39)
    assert plan.noise_multiplier_present(40) == pytest.approx(1.1)
    assert plan.noise_multiplier_present(50) == pytest.approx(1.1 * math.sqrt(50 / 40))
    with pytest.raises(ConfigError) as error:
        per_device_variance(1.0, 10, 1.0)
    assert error.value.field == "dropout_margin"


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
