"""Bounded influence: the weight floor caps a liar's gain, and an aggregate no clipped inputs could produce
is refused (with the product's real encoder and decoder)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder
from shared.influence import (
    WEIGHT_FLOOR,
    AggregateOutOfBounds,
    aggregate_bound,
    check_aggregate,
    device_weight,
)

DIM = 300
CLIP = 1.0


@given(examples=st.integers(1, 10**6), cap=st.integers(1, 10**5))
def test_a_liar_gains_at_most_one_over_the_floor(examples: int, cap: int) -> None:
    honest = device_weight(examples, cap)
    assert WEIGHT_FLOOR <= honest <= 1.0
    assert 1.0 / honest <= 1.0 / WEIGHT_FLOOR + 1e-12  # a liar claims at most 1 (the codec refuses more)


def test_no_examples_no_weight() -> None:
    assert device_weight(0, 100) == 0.0


def _round(config: CodecConfig, deltas: list[np.ndarray], weights: list[float], rogue_factor: int = 1):
    """Encode every delta, the last one multiplied by ``rogue_factor`` in the integer domain (beyond the
    clip: what a device that skips clipping can send), sum mod 2^b, decode: (mean, weight, bound)."""
    encoder = UpdateEncoder(config, DIM)
    decoder = UpdateDecoder(config, DIM)
    total = np.zeros(encoder.encoded_length, dtype=np.uint64)
    for i, (delta, weight) in enumerate(zip(deltas, weights)):
        encoded = encoder.encode(delta, weight, np.random.default_rng(i)).astype(np.uint64)
        if i == len(deltas) - 1 and rogue_factor != 1:
            encoded[: encoder.data_length] *= rogue_factor
        total += encoded
    total &= (1 << config.bits) - 1
    mean, weight = decoder.decode(total.astype(np.uint32), len(deltas))
    bound = aggregate_bound(
        clip_norm=config.clip_norm,
        total_weight=weight,
        contributors=len(deltas),
        scale=decoder.scale,
        data_length=decoder.data_length,
        subsample_rate=config.subsample_rate,
    )
    return mean, weight, bound


@pytest.mark.parametrize("bits,subsample", [(16, 1.0), (12, 1.0), (16, 0.5)])
@pytest.mark.parametrize("seed", range(5))
def test_honest_rounds_stay_within_the_bound(bits: int, subsample: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    config = CodecConfig(
        bits=bits, clip_norm=CLIP, expected_clients=n, seed=bytes(32), subsample_rate=subsample
    )
    # every delta far beyond the clip, all pointing the same way: the worst honest case
    direction = rng.normal(size=DIM).astype(np.float32)
    deltas = [(direction * 50).astype(np.float32) for _ in range(n)]
    weights = [float(w) for w in rng.uniform(WEIGHT_FLOOR, 1.0, n)]
    mean, _, bound = _round(config, deltas, weights)
    assert check_aggregate(mean, bound, n) <= bound


@pytest.mark.parametrize("seed", range(5))
def test_an_update_beyond_the_clip_is_refused(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    config = CodecConfig(bits=16, clip_norm=CLIP, expected_clients=n, seed=bytes(32))
    deltas = [rng.normal(size=DIM).astype(np.float32) * 0.01 for _ in range(n)]
    weights = [0.5] * n
    mean, _, bound = _round(config, [*deltas[:-1], np.ones(DIM, np.float32)], weights, rogue_factor=40)
    with pytest.raises(AggregateOutOfBounds, match="beyond the clip"):
        check_aggregate(mean, bound, n)


def test_non_finite_aggregate_is_refused() -> None:
    with pytest.raises(AggregateOutOfBounds):
        check_aggregate(np.array([np.nan, 0.0]), 1.0, 2)
