"""Stochastic rounding and the no-wrap scale: unbiased, and the sum wraps no more often than stated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.codec.quantize import StochasticQuantize, coordinate_bound, no_wrap_scale, unwrap_signed
from shared.codec.rotation import RandomizedHadamard
from shared.errors import CodecError


def test_unwrap_signed() -> None:
    values = np.array([0, 1, 127, 128, 255], dtype=np.uint32)
    assert unwrap_signed(values, 8).tolist() == [0, 1, 127, -128, -1]
    assert unwrap_signed(np.array([2**32 - 1], dtype=np.uint32), 32).tolist() == [-1]


def test_rounding_is_unbiased() -> None:
    # floor(s y + u) has mean s y and variance <= 1/4, so the mean of T draws is within 5.5/(2 sqrt T).
    step = StochasticQuantize(scale=3.0, bits=12)
    y = np.linspace(-5, 5, 101)
    rng = np.random.default_rng(1)
    trials = 4000
    total = np.zeros_like(y)
    out = np.empty(y.size, dtype=np.uint32)
    for _ in range(trials):
        step.encode(y, out, rng)
        total += step.decode(out)
    assert np.all(np.abs(total / trials - y) <= 5.5 / (2 * math.sqrt(trials)) / 3.0)


def test_scale_formula() -> None:
    bound = coordinate_bound(2.0, 1024, 10, 1e-9)
    assert bound == pytest.approx(10 * 2.0 * math.sqrt(2 * math.log(2 * 1024 / 1e-9) / 1024))
    assert no_wrap_scale(16, 2.0, 1024, 10, 1e-9) * bound == pytest.approx(2**15 - 1 - 10, rel=1e-4)
    assert coordinate_bound(2.0, 1024, 10, 1e-9, rotated=False) == 20.0
    with pytest.raises(CodecError):
        no_wrap_scale(4, 1.0, 64, 7, 0.01)


def count_wraps(scale_factor: float, beta: float, trials: int, dim: int = 64) -> int:
    """Sum n encodings of norm-C vectors all pointing the same way (the worst case for ||sum||)."""
    bits, clip, clients = 8, 1.0, 8
    mixing = RandomizedHadamard(dim, bytes(32)).mixing_dim
    scale = no_wrap_scale(bits, clip, mixing, clients, beta, coordinates=dim) * scale_factor
    step = StochasticQuantize(scale, bits)
    rng = np.random.default_rng(1234)
    wraps = 0
    encoded = np.empty(dim, dtype=np.uint32)
    for trial in range(trials):
        x = rng.standard_normal(dim)
        x *= clip / np.linalg.norm(x)
        RandomizedHadamard(dim, trial.to_bytes(32, "little")).encode(x)
        summed = np.zeros(dim, dtype=np.uint32)
        for _ in range(clients):
            step.encode(x, encoded, rng)
            summed += encoded
        summed &= np.uint32((1 << bits) - 1)
        error = np.abs(step.decode(summed) * scale - clients * x * scale)
        wraps += bool(error.max() > clients)  # rounding moves the sum by < n; a wrap moves it by 2^b
    return wraps


@pytest.mark.parametrize("dim", [64, 96])  # a power of two, and the two-block rotation
def test_wrap_rate_is_below_the_stated_probability(dim: int) -> None:
    beta, trials = 0.2, 400
    wraps = count_wraps(1.0, beta, trials, dim)
    # Binomial(trials, beta) upper tail: allow 4 sigma above the stated rate (the bound is conservative).
    assert wraps <= trials * beta + 4 * math.sqrt(trials * beta * (1 - beta))
    # The counter is sensitive: with a scale 2.5x beyond the bound, sums do wrap.
    assert count_wraps(2.5, beta, 100, dim) > 0
