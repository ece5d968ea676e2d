"""Statistical checks of the DP noise samplers.

Variance tolerance: for N i.i.d. draws with variance σ² (and excess kurtosis κ), the sample variance s² has
relative standard deviation sqrt((2 + κ) / N) (κ = 1/(2μ) for Skellam, 0 for Gaussian: negligible here).
Each check allows 5 such standard deviations, so a *random* seed fails with probability below 1e-6; the
seeds are fixed anyway so the suite is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.dp.calibration import plan_device_noise
from shared.dp.noise import add_central_gaussian_noise, gaussian_noise, secure_generator, skellam_noise
from shared.errors import ConfigError

Z_TOLERANCE = 5.0


def _variance_tolerance(samples: int) -> float:
    return Z_TOLERANCE * math.sqrt(2.0 / samples)


def _summed_device_noise(per_device_variance: float, devices: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.zeros(dim, dtype=np.int64)
    for _ in range(devices):
        total += skellam_noise(dim, per_device_variance, rng=rng, chunk_size=4096)
    return total


def test_skellam_single_device_moments() -> None:
    samples = 200_000
    noise = skellam_noise(samples, 7.0, rng=np.random.default_rng(1))
    assert noise.dtype == np.int64 and noise.shape == (samples,)
    assert abs(noise.mean()) < Z_TOLERANCE * math.sqrt(7.0 / samples)
    assert abs(noise.var(ddof=1) / 7.0 - 1.0) < _variance_tolerance(samples)


@pytest.mark.parametrize("survivors_kind", ["all", "min_within_margin"])
def test_summed_skellam_carries_target_variance(survivors_kind: str) -> None:
    plan = plan_device_noise(
        1.0, clip_norm=1.0, scale=64.0, dim=1000, n_expected=20, dropout_margin=0.1, beta=math.exp(-0.5)
    )
    survivors = plan.n_expected if survivors_kind == "all" else plan.min_survivors
    assert plan.min_survivors == 18
    dim = 50_000  # coordinates are i.i.d. trials of the summed noise
    total = _summed_device_noise(plan.per_device_variance, survivors, dim, seed=survivors)
    expected = plan.variance_present(survivors)
    ratio = total.var(ddof=1) / expected
    assert abs(ratio - 1.0) < _variance_tolerance(dim)
    # The guarantee the dropout margin buys: the noise credited (all survivors but one) meets the target.
    assert plan.meets_target(survivors)
    assert expected >= plan.target_sum_variance
    # ...and the lower confidence bound of the measured variance is still above the credited variance.
    credited = plan.variance_credited(plan.min_survivors)
    assert total.var(ddof=1) >= credited * (1.0 - _variance_tolerance(dim))


def test_dropouts_beyond_margin_fall_short_and_are_reported() -> None:
    plan = plan_device_noise(
        2.0, clip_norm=1.0, scale=64.0, dim=1000, n_expected=20, dropout_margin=0.1, beta=math.exp(-0.5)
    )
    too_few = plan.min_survivors - 1
    assert not plan.meets_target(too_few)
    assert plan.noise_multiplier_present(too_few) < 2.0 <= plan.noise_multiplier_present(plan.min_survivors)


def test_skellam_large_dimension_chunked() -> None:
    noise = skellam_noise(1_000_000, 50.0, rng=np.random.default_rng(3), chunk_size=100_003)
    assert noise.shape == (1_000_000,)
    assert abs(noise.var() / 50.0 - 1.0) < _variance_tolerance(1_000_000)


def test_zero_variance_gives_zeros_and_bad_variance_is_rejected() -> None:
    assert not skellam_noise(10, 0.0).any()
    with pytest.raises(ConfigError) as error:
        skellam_noise(10, -1.0)
    assert error.value.field == "variance"
    with pytest.raises(ConfigError):
        skellam_noise(10, float("nan"))
    with pytest.raises(ConfigError) as error:
        skellam_noise(-1, 1.0)
    assert error.value.field == "size"


def test_secure_generator_streams_differ() -> None:
    first = skellam_noise(64, 100.0, rng=secure_generator())
    second = skellam_noise(64, 100.0)  # default: a fresh OS-seeded generator
    assert not np.array_equal(first, second)


def test_central_gaussian_noise() -> None:
    samples = 200_000
    noise = gaussian_noise(samples, 3.0, rng=np.random.default_rng(5), chunk_size=777)
    assert abs(noise.var(ddof=1) / 9.0 - 1.0) < _variance_tolerance(samples)
    decoded_sum = np.arange(5, dtype=np.float32)
    noisy = add_central_gaussian_noise(decoded_sum, 0.5, rng=np.random.default_rng(6))
    assert noisy.dtype == np.float64 and noisy.shape == (5,)
    assert np.array_equal(decoded_sum, np.arange(5, dtype=np.float32))  # input untouched
    assert not np.array_equal(noisy, decoded_sum)
    with pytest.raises(ConfigError):
        add_central_gaussian_noise(decoded_sum, 0.0)
