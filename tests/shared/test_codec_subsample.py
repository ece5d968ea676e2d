"""Shared-seed subsampling: same coordinates on every device, linear, unbiased after 1/p."""

from __future__ import annotations

import numpy as np
import pytest

from shared.codec.subsample import Subsample
from shared.errors import CodecError


def test_same_mask_for_every_device_and_rate() -> None:
    first = Subsample(100_000, 0.25, b"\x07" * 32)
    second = Subsample(100_000, 0.25, b"\x07" * 32)
    assert np.array_equal(first.mask(), second.mask())
    assert first.kept == int(first.mask().sum())
    assert abs(first.kept / 100_000 - 0.25) < 0.01
    assert not np.array_equal(first.mask(), Subsample(100_000, 0.25, b"\x08" * 32).mask())


def test_compaction_is_linear_and_decode_scatters() -> None:
    rng = np.random.default_rng(0)
    step = Subsample(5000, 0.5, bytes(32))
    a, b = rng.standard_normal(5000), rng.standard_normal(5000)
    kept_a, kept_b, kept_sum = a.copy(), b.copy(), a + b
    for vector in (kept_a, kept_b, kept_sum):
        assert step.encode(vector) == step.kept
    np.testing.assert_allclose(kept_a[: step.kept] + kept_b[: step.kept], kept_sum[: step.kept])
    full = step.decode(kept_sum[: step.kept].copy())
    mask = step.mask()
    np.testing.assert_allclose(full[mask], 2 * (a + b)[mask])
    assert not full[~mask].any()


def test_unbiased_over_round_seeds() -> None:
    # E[decode(encode(x))] = x; each coordinate's estimate has variance x^2 (1/p - 1) per seed.
    x = np.linspace(-1, 1, 256)
    trials, rate = 2000, 0.5
    total = np.zeros_like(x)
    for trial in range(trials):
        step = Subsample(x.size, rate, trial.to_bytes(32, "little"))
        work = x.copy()
        step.encode(work)
        total += step.decode(work[: step.kept].copy())
    tolerance = 5.5 * np.sqrt(x**2 * (1 / rate - 1) / trials) + 1e-12  # 5.5 sigma, union over 256 coords
    assert np.all(np.abs(total / trials - x) <= tolerance)


def test_rate_one_keeps_everything() -> None:
    step = Subsample(10, 1.0, bytes(32))
    assert step.kept == 10
    with pytest.raises(CodecError):
        Subsample(10, 0.0, bytes(32))
