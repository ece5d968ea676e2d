"""Randomised Hadamard rotation: orthonormal, seeded, invertible to float precision."""

from __future__ import annotations

import numpy as np
import pytest

from shared.codec.rotation import RandomizedHadamard, fwht
from shared.errors import CodecError


def hadamard(n: int) -> np.ndarray:
    matrix = np.array([[1.0]])
    while matrix.shape[0] < n:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix / np.sqrt(n)


@pytest.mark.parametrize("n", [1, 2, 4, 64, 256])
def test_fwht_matches_the_matrix(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n)
    y = x.copy()
    fwht(y)
    np.testing.assert_allclose(y, hadamard(n) @ x, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 3, 64, 1000, 70_000])
def test_round_trip_and_norm(dim: int) -> None:
    rotation = RandomizedHadamard(dim, bytes(range(32)))
    assert rotation.padded_dim == dim  # nothing is padded
    assert rotation.mixing_dim <= dim < 2 * rotation.mixing_dim
    x = np.zeros(rotation.padded_dim, dtype=np.float32)
    x[:dim] = np.random.default_rng(dim).standard_normal(dim)
    y = x.copy()
    rotation.encode(y)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-5)
    rotation.decode(y)
    np.testing.assert_allclose(y, x, atol=1e-5 * max(1.0, float(np.abs(x).max())))


def test_spreads_a_spike_and_depends_on_the_seed() -> None:
    spike = np.zeros(1024)
    spike[3] = 1.0
    a, b, c = spike.copy(), spike.copy(), spike.copy()
    RandomizedHadamard(1024, b"\x01" * 32).encode(a)
    RandomizedHadamard(1024, b"\x01" * 32).encode(b)
    RandomizedHadamard(1024, b"\x02" * 32).encode(c)
    np.testing.assert_allclose(np.abs(a), 1 / 32)  # energy spread evenly
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_non_power_of_two_spreads_a_spike_in_the_tail() -> None:
    """A spike in the coordinates only the second block covers is still spread over m coordinates."""
    dim = 1000
    rotation = RandomizedHadamard(dim, b"\x03" * 32)
    for position in (0, 700, 999):
        spike = np.zeros(dim)
        spike[position] = 1.0
        rotation.encode(spike)
        assert np.abs(spike).max() <= 1 / np.sqrt(rotation.mixing_dim) + 1e-12
        assert np.count_nonzero(np.abs(spike) > 1e-12) >= rotation.mixing_dim


def test_rejects_bad_seed_and_length() -> None:
    with pytest.raises(CodecError):
        RandomizedHadamard(8, b"short")
    with pytest.raises(CodecError):
        RandomizedHadamard(8, bytes(32)).encode(np.zeros(7))
