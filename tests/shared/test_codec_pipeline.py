"""The uplink codec end to end: linearity, unbiasedness, exact weights, config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec.pipeline import (
    CodecConfig,
    Float32Codec,
    TopKEncoder,
    UpdateDecoder,
    UpdateEncoder,
    WeightCoordinates,
)
from shared.errors import CodecError, ConfigError

SEED = bytes(range(32))


def modular_sum(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total += vector  # uint32 wraparound
    return total & np.uint32((1 << bits) - 1)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 300),
    clients=st.integers(1, 5),
    bits=st.sampled_from([8, 12, 16, 24, 32]),
    rate=st.sampled_from([1.0, 0.5]),
    rotation=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_of_sum_is_weighted_mean_of_decodes(
    dim: int, clients: int, bits: int, rate: float, rotation: bool, seed: int
) -> None:
    config = CodecConfig(
        bits=bits,
        clip_norm=1.0,
        expected_clients=8,
        seed=seed.to_bytes(32, "little"),
        rotation=rotation,
        subsample_rate=rate,
    )
    encoder, decoder = UpdateEncoder(config, dim), UpdateDecoder(config, dim)
    rng = np.random.default_rng(seed)
    deltas = [rng.standard_normal(dim).astype(np.float32) * rng.uniform(0.01, 3) for _ in range(clients)]
    weights = [float(rng.uniform(0.05, 1.0)) for _ in range(clients)]
    encoded = [encoder.encode(d, w, rng) for d, w in zip(deltas, weights)]
    assert all(e.shape == (encoder.encoded_length,) and e.dtype == np.uint32 for e in encoded)
    assert all(int(e.max()) < 1 << bits for e in encoded)
    mean, total = decoder.decode(modular_sum(encoded, bits), clients)
    singles = [decoder.decode(e, 1) for e in encoded]
    grid = [round(w * 2**16) / 2**16 for w in weights]
    assert total == pytest.approx(sum(grid), abs=1e-12)  # exact on the 2^-16 grid
    assert [w for _, w in singles] == pytest.approx(grid, abs=1e-12)
    expected = sum(w * m.astype(np.float64) for m, w in singles) / sum(grid)
    np.testing.assert_allclose(mean, expected, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    if rate == 1.0:
        # Against the true weighted mean of clipped deltas: each device's rounding moves each rotated
        # coordinate by < 1/s, so the L2 error is below sqrt(d_pad) * n / s / sum(w), plus float32 slack.
        clipped = [
            d.astype(np.float64) * min(1.0, 1.0 / np.linalg.norm(d.astype(np.float64))) for d in deltas
        ]
        truth = sum(w * c for w, c in zip(grid, clipped)) / sum(grid)
        bound = math.sqrt(encoder.padded_dim) * clients / encoder.scale / sum(grid)
        assert np.linalg.norm(mean - truth) <= bound + 1e-5


def test_unbiased_over_device_randomness() -> None:
    # Fixed round seed; per decoded coordinate the rounding variance is <= 1/(4 s^2) (H is orthonormal),
    # so the mean of T decodes lies within z / (2 s sqrt(T)) with z = 5.5 (union over 100 coordinates).
    dim, trials = 100, 1500
    config = CodecConfig(bits=6, clip_norm=1.0, expected_clients=4, seed=SEED)
    encoder, decoder = UpdateEncoder(config, dim), UpdateDecoder(config, dim)
    x = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    x /= np.linalg.norm(x) * 1.01
    rng = np.random.default_rng(1)
    total = np.zeros(dim)
    for _ in range(trials):
        total += decoder.decode(encoder.encode(x, 1.0, rng), 1)[0]
    assert np.all(np.abs(total / trials - x) <= 5.5 / (2 * encoder.scale * math.sqrt(trials)) + 1e-6)


def test_unbiased_with_subsampling_over_round_seeds() -> None:
    # Per coordinate: variance <= (1/p - 1) ||x||^2 / d_pad (mask) + 1 / (4 s^2 p) (rounding).
    dim, trials, rate = 64, 1500, 0.5
    x = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    x /= np.linalg.norm(x) * 1.01
    rng = np.random.default_rng(2)
    total = np.zeros(dim)
    scale = 0.0
    for trial in range(trials):
        config = CodecConfig(
            bits=10, clip_norm=1.0, expected_clients=4, seed=trial.to_bytes(32, "little"), subsample_rate=rate
        )
        encoder = UpdateEncoder(config, dim)
        scale = encoder.scale
        total += UpdateDecoder(config, dim).decode(encoder.encode(x, 1.0, rng), 1)[0]
    variance = (1 / rate - 1) * float(np.dot(x, x)) / dim + 1 / (4 * scale**2 * rate)
    assert np.all(np.abs(total / trials - x) <= 5.5 * math.sqrt(variance / trials))


@pytest.mark.parametrize(("bits", "clients", "limbs"), [(32, 100, 1), (16, 100, 2), (8, 8, 4), (3, 7, 17)])
def test_weight_limbs_hold_the_sum_exactly(bits: int, clients: int, limbs: int) -> None:
    weights = WeightCoordinates(bits, 16, clients)
    assert weights.count == limbs
    assert clients * ((1 << weights.limb_bits) - 1) < 1 << bits
    grid = [weights.grid(w) for w in np.linspace(0, 1, clients)]
    total = np.zeros(weights.count, dtype=np.uint32)
    for g in grid:
        limb = np.empty(weights.count, dtype=np.uint32)
        weights.encode(g, limb)
        total += limb
    assert int(total.max()) < 1 << bits
    assert weights.decode(total, clients) == sum(grid) / 2**16


def test_encoded_length_and_extreme_weights() -> None:
    config = CodecConfig(bits=16, clip_norm=1.0, expected_clients=10, seed=SEED)
    encoder, decoder = UpdateEncoder(config, 1000), UpdateDecoder(config, 1000)
    assert encoder.encoded_length == 1000 + encoder.weights.count  # no padding, weight limbs last
    rng = np.random.default_rng(0)
    delta = np.ones(1000, dtype=np.float32)
    zero = encoder.encode(delta, 0.0, rng)
    with pytest.raises(CodecError, match="weight is zero"):
        decoder.decode(zero, 1)
    with pytest.raises(CodecError):
        encoder.encode(delta, 1.5, rng)
    with pytest.raises(CodecError):
        encoder.encode(delta[:10], 1.0, rng)
    with pytest.raises(CodecError):
        decoder.decode(encoder.encode(delta, 1.0, rng), 11)  # more clients than the scale allows


def test_config_round_trip_and_validation() -> None:
    config = CodecConfig(bits=12, clip_norm=0.5, expected_clients=50, seed=SEED, subsample_rate=0.25)
    assert CodecConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.to_dict()["seed"], bytes)
    bad = [
        ({"bits": 0}, "bits"),
        ({"bits": 6, "expected_clients": 40}, "bits"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"seed": b"x"}, "seed"),
        ({"subsample_rate": 0.0}, "subsample_rate"),
        ({"expected_clients": 0}, "expected_clients"),
        ({"scheme": "zip"}, "scheme"),
        ({"wrap_probability": 1.0}, "wrap_probability"),
    ]
    for change, field in bad:
        with pytest.raises(ConfigError) as caught:
            CodecConfig(**{**config.to_dict(), **change}).validate()
        assert caught.value.field == field
    with pytest.raises(ConfigError):
        CodecConfig.from_dict({**config.to_dict(), "extra": 1})


@pytest.mark.parametrize("scheme", ["topk", "float32"])
def test_trusted_only_codecs_refused_under_secure_aggregation(scheme: str) -> None:
    config = CodecConfig(bits=16, clip_norm=1.0, expected_clients=4, seed=SEED, scheme=scheme)
    config.validate(secure=False)
    with pytest.raises(ConfigError, match="secure aggregation") as caught:
        config.validate(secure=True)
    assert caught.value.field == "scheme"
    with pytest.raises(ConfigError):
        UpdateEncoder(config, 10)


def test_float32_and_topk_with_error_feedback() -> None:
    dim = 50
    config = CodecConfig(
        bits=16, clip_norm=10.0, expected_clients=4, seed=SEED, scheme="topk", topk_fraction=0.1
    )
    dense = Float32Codec(config, dim)
    topk = TopKEncoder(config, dim)
    delta = np.random.default_rng(0).standard_normal(dim).astype(np.float32)
    mean, weight = dense.decode(dense.encode(delta, 0.5) + dense.encode(delta, 0.5), 2)
    np.testing.assert_allclose(mean, delta, rtol=1e-6)
    assert weight == 1.0
    sent = np.zeros(dim + 1)
    for _ in range(10):  # error feedback: after 10 rounds at 10%, everything has been sent once
        topk.encode(delta, 1.0).add_into(sent)
        topk.encode(np.zeros(dim, dtype=np.float32), 0.0).add_into(sent)
    np.testing.assert_allclose(sent[:-1] + topk.residual, 10 * delta, rtol=1e-5)
