"""Broker-free tests of the aggregator's round policy (aggregator/rounds.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aggregator import rounds
from aggregator.blocks import choose_blocks, rotation_scales, set_cost
from aggregator.config import AggregatorConfig
from aggregator.rounds import Recovery
from aggregator.store import RoundRecord
from shared.dp import DPConfig, sum_noise_headroom
from shared.errors import CodecError, ConfigError
from shared.layout import Block
from shared.mqtt import MqttConfig
from shared.plan import MODE_SECURE, PhaseWindows
from shared.staleness import StalenessPolicy

BLOCKS = [Block(name, (f"{name}.w",), offset, size) for name, offset, size in
          [("0", 0, 40), ("1", 40, 400), ("2", 440, 4000), ("3", 4440, 60)]]  # fmt: skip
DIM = 4500


def record(round_id: int, status: str) -> RoundRecord:
    return RoundRecord(round_id, round_id, 100.0, 130.0, status, 3, "")


def config(**overrides: object) -> AggregatorConfig:
    keys = {f"dev-{i}": bytes([i + 1]) * 32 for i in range(4)}
    defaults: dict[str, object] = {"directory": keys, "store_dir": Path("unused")}
    mqtt = MqttConfig.from_url("mqtt://127.0.0.1:9", "agg")
    return AggregatorConfig("fed", mqtt, **{**defaults, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("last", "snapshot_round", "secure", "expected"),
    [
        (None, None, False, Recovery.NONE),
        (record(4, "closed"), 4, False, Recovery.NONE),
        (record(4, "abandoned"), 3, True, Recovery.NONE),
        (record(4, "open"), 4, False, Recovery.MARK_CLOSED),  # snapshot written, round not marked
        (record(4, "open"), 4, True, Recovery.MARK_CLOSED),
        (record(4, "open"), 3, False, Recovery.RESUME),  # plain: the journal has what it needs
        (record(4, "open"), None, False, Recovery.RESUME),
        (record(4, "open"), 3, True, Recovery.ABANDON),  # secure: protocol state was in memory only
    ],
)
def test_recovery_of_the_last_round(last, snapshot_round, secure, expected):
    assert rounds.recover(last, snapshot_round, secure=secure) is expected


def test_round_ids_continue_after_the_last_round():
    assert rounds.next_round_id(None) == 0
    assert rounds.next_round_id(record(7, "abandoned")) == 8


def test_without_a_budget_every_block_trains():
    choice = rounds.choose_round_blocks(BLOCKS, 3, budgets=[], profiles=[])
    assert choice.blocks is None and dict(choice.scales) == {}
    # a budget of 0 means "undeclared" and does not constrain either
    assert rounds.choose_round_blocks(BLOCKS, 3, budgets=[0], profiles=[]).blocks is None


def test_the_smallest_declared_budget_picks_the_rotating_blocks():
    full = set_cost(BLOCKS, BLOCKS, None)
    small, large = 4 * DIM + 4 * 4100, full * 2  # the largest block fits on its own, not with block 1
    for round_id in range(6):
        choice = rounds.choose_round_blocks(BLOCKS, round_id, budgets=[large, small], profiles=[])
        assert choice.blocks == tuple(choose_blocks(BLOCKS, small, round_id, None))
        assert dict(choice.scales) == rotation_scales(BLOCKS, small, None)
    sets = {rounds.choose_round_blocks(BLOCKS, r, budgets=[small], profiles=[]).blocks for r in range(8)}
    assert len(sets) > 1  # it rotates
    assert set().union(*sets) == {b.name for b in BLOCKS}  # and every block gets its turn


def test_profiles_take_the_largest_figure_per_block_and_ignore_other_models():
    full = set_cost(BLOCKS, BLOCKS, None)
    budget = full // 2
    a, b = [10, 500, 20, 5], [30, 100, 40, 5]
    chosen = rounds.choose_round_blocks(BLOCKS, 1, budgets=[budget], profiles=[a, b, [1, 2]])
    safe = [30, 500, 40, 5]
    assert chosen.blocks == tuple(choose_blocks(BLOCKS, budget, 1, safe))
    assert dict(chosen.scales) == rotation_scales(BLOCKS, budget, safe)


def test_secure_plan_carries_the_configuration_and_a_fresh_seed():
    cfg = config(staleness=StalenessPolicy("age-variance", 3, 0.5), weight_cap=250,
                 windows=PhaseWindows(keys=2, shares=3, masked=7, unmask=4))  # fmt: skip
    seed = bytes(range(32))
    plan = rounds.plan_secure_round(cfg, seed=seed, blocks=("1", "2"))
    assert plan.mode == MODE_SECURE and plan.secure
    assert plan.codec is not None and plan.codec.seed == seed
    assert plan.codec.bits == cfg.codec.bits and plan.codec.clip_norm == cfg.codec.clip_norm
    assert plan.weight_cap == 250 and plan.staleness == cfg.staleness and plan.windows == cfg.windows
    assert plan.blocks == ("1", "2") and plan.dp is None
    assert plan.masked_window == 7


def test_distributed_dp_plan_resolves_the_noise_and_leaves_headroom_in_the_codec():
    dp = DPConfig(mode="distributed", target_epsilon=5.0, target_rounds=10, delta=1e-5, clip_norm=5.0,
                  dropout_margin=0.2, sampling_q=0.5)  # fmt: skip
    cfg = config(dp=dp)
    sigma = dp.resolved_noise_multiplier()
    plan = rounds.plan_secure_round(cfg, seed=bytes(32), noise_multiplier=sigma)
    assert plan.dp is not None and plan.codec is not None
    assert plan.dp.noise_multiplier == sigma and plan.dp.target_epsilon is None
    assert plan.dp.clip_norm == plan.codec.clip_norm
    assert plan.codec.noise_multiplier == sum_noise_headroom(sigma, 0.2, cfg.min_clients)
    assert plan.codec.noise_multiplier > sigma  # room for the noise of fewer survivors
    assert plan.sampling_q == 0.5
    with pytest.raises(ConfigError, match="noise multiplier"):
        rounds.plan_secure_round(cfg, seed=bytes(32))


def test_expansion_scatters_each_block_and_scales_it_bit_exactly():
    rng = np.random.default_rng(0)
    slices = [(b.name, b.slice) for b in BLOCKS if b.name in ("1", "3")]
    mean = rng.standard_normal(400 + 60).astype(np.float32)
    plain = rounds.expand_partial(mean, dim=DIM, slices=slices)
    assert plain.mean.dtype == np.float32 and plain.mean.shape == (DIM,)
    assert np.array_equal(plain.mean[40:440], mean[:400]) and np.array_equal(plain.mean[4440:], mean[400:])
    assert not plain.mean[:40].any() and not plain.mean[440:4440].any()  # the other blocks do not move
    assert plain.metrics == {"trained_fraction": 460 / DIM}
    scaled = rounds.expand_partial(mean, dim=DIM, slices=slices, scales={"1": 3.0, "3": 1.5})
    assert np.array_equal(scaled.mean[40:440], mean[:400] * np.float32(3.0))
    assert np.array_equal(scaled.mean[4440:], mean[400:] * np.float32(1.5))
    assert scaled.metrics["rotation_scale"] == 3.0


def test_expansion_of_a_full_round_is_the_identity_and_a_mismatch_is_refused():
    mean = np.arange(DIM, dtype=np.float32)
    assert rounds.expand_partial(mean, dim=DIM, slices=None).mean is mean
    with pytest.raises(CodecError, match="coordinates"):
        rounds.expand_partial(mean[:10], dim=DIM, slices=[("1", BLOCKS[1].slice)])


def test_the_privacy_budget_stops_rounds_only_when_dp_has_a_budget():
    from shared.dp import PrivacyAccountant

    assert rounds.budget_allows(None, DPConfig(), None)
    dp = DPConfig(mode="central", noise_multiplier=4.0, delta=1e-5, clip_norm=5.0, budget_epsilon=2.0)
    accountant = PrivacyAccountant(1e-5, None)
    allowed = 0
    while rounds.budget_allows(accountant, dp, 4.0) and allowed < 100:
        accountant.record_round(4.0)
        allowed += 1
    assert 0 < allowed < 100 and accountant.epsilon() <= 2.0
