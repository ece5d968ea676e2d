"""Distributed DP on the device: Skellam noise goes into the encoded vector before masking."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.secure import encode_update
from shared.codec import CodecConfig, UpdateEncoder
from shared.dp import DPConfig, device_noise_plan


def signed(values: np.ndarray, bits: int) -> np.ndarray:
    out = values.astype(np.int64)
    out[out >= 1 << (bits - 1)] -= 1 << bits
    return out


@pytest.mark.parametrize("bits", [16, 20])
def test_noise_is_in_the_encoded_vector_with_the_planned_variance(bits):
    dim = 20_000
    config = CodecConfig(bits=bits, clip_norm=1.0, expected_clients=10, seed=bytes(32), noise_multiplier=1.2)
    encoder = UpdateEncoder(config, dim)
    dp = DPConfig(mode="distributed", noise_multiplier=1.0, delta=1e-5, clip_norm=1.0)
    plan = device_noise_plan(dp, 1.0, config, encoder, roster_size=10)
    delta = np.random.default_rng(0).normal(size=dim).astype(np.float32)
    clean = encode_update(encoder, delta, 0.5, np.random.default_rng(7))
    noisy = encode_update(
        encoder, delta, 0.5, np.random.default_rng(7), plan.per_device_variance, np.random.default_rng(8)
    )
    diff = signed((noisy - clean) & np.uint32((1 << bits) - 1), bits)
    data, weight = diff[: encoder.data_length], diff[encoder.data_length :]
    assert np.all(weight == 0)  # the weight limbs carry no noise
    assert np.any(data != 0)
    # Sample variance within 5 standard errors (sqrt(2/N) relative) of the planned per-device variance.
    ratio = data.var() / plan.per_device_variance
    assert abs(ratio - 1) < 5 * np.sqrt(2 / data.size), ratio
    assert abs(data.mean()) < 5 * np.sqrt(plan.per_device_variance / data.size)


def test_no_noise_without_dp():
    config = CodecConfig(bits=16, clip_norm=1.0, expected_clients=4, seed=bytes(32))
    encoder = UpdateEncoder(config, 1000)
    delta = np.ones(1000, np.float32)
    a = encode_update(encoder, delta, 1.0, np.random.default_rng(1))
    b = encode_update(encoder, delta, 1.0, np.random.default_rng(1), 0.0, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
