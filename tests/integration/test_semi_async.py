"""Semi-asynchronous secure rounds: staleness weighting, max staleness, buffered close with
over-selection, and memory-budgeted partial training, over a real Mosquitto."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from aggregator.blocks import training_cost
from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from edge_client.memory import activation_profile
from edge_client.trainer import LocalTrainer
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder
from shared.influence import device_weight
from shared.snapshots import make_snapshot
from shared.staleness import StalenessPolicy
from tests.support import (
    directory_of,
    enrol,
    eventually,
    initial_weights,
    mqtt_config,
    run_rounds,
    secure_devices,
)

pytestmark = pytest.mark.broker
FED = "async"


class SlowTrainer(LocalTrainer):
    """Trains normally but takes ``delay`` seconds for its first training (a straggler); with
    ``every_time``, every training takes that much longer and reports it (a persistently slow device)."""

    delay = 0.0
    every_time = False

    def train(self, global_weights, blocks=None, micro_batch=None, momentum=True):
        result = super().train(global_weights, blocks, micro_batch, momentum)
        if self.delay:
            time.sleep(self.delay)
            if self.every_time:
                return dataclasses.replace(result, seconds=result.seconds + self.delay)
            self.delay = 0.0
        return result


def fleet(broker, digits, keys, verify_key, budgets=None):
    return secure_devices(
        broker, digits, keys, verify_key, FED, seed=3, budgets=budgets, trainer_cls=SlowTrainer
    )


def agg_config(broker, tmp_path, keys, **kw):
    values = dict(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory_of(keys),
        codec=CodecConfig(bits=20, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=5, shares=8, masked=4, unmask=8),
        min_clients=2,
        target_clients=4,
        snapshot_encoding="f32",
    )
    values.update(kw)
    return AggregatorConfig(**values)


def first_block_budget(model, digits) -> int:
    """All weights, the first block's gradients and one example's activations from it (as the device
    measures and announces them): the second block fits alone but not beside the first."""
    x, y = torch.from_numpy(digits.x_train[:16]), torch.from_numpy(digits.y_train[:16])
    profile = activation_profile(model, x, y, torch.nn.functional.cross_entropy)
    return training_cost(model.dim, model.layout.blocks()[0].size, profile[0]) + 1


@pytest.mark.parametrize("function", ["fedbuff", "age-variance"])
async def test_stale_delta_is_weighted_exactly_as_documented(broker, tmp_path, digits, function):
    keys = enrol(6)
    model, weights = initial_weights()
    policy = StalenessPolicy(function, max_staleness=3, reference_norm=0.5)
    cfg = agg_config(broker, tmp_path, keys, staleness=policy, min_clients=4, target_clients=6)
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key)
        straggler = devices[0]
        straggler.trainer.delay = 6.0  # misses round 0's masked window (4 s), delivers in a later round
        captured = {}

        def capture(phase):
            if phase == "masked" and straggler.secure_round is not None:
                captured[agg.version] = straggler.secure_round

        straggler.phase_hook = capture
        results = await run_rounds(agg, devices, 8, until=lambda: bool(captured))
    assert all(r.status == "closed" for r in results), [r.reason for r in results]
    assert results[0].contributors == 5  # the straggler dropped out of round 0 ...
    # ... and contributed its v0 delta to a later round (staleness depends on timing, <= max 3)
    assert len(straggler.stats.staleness) >= 1 and 1 <= straggler.stats.staleness[0] <= 3
    tau = straggler.stats.staleness[0]
    part = captured[tau]
    assert part.staleness == tau
    result = part.training.result()
    norm = float(np.linalg.norm(result.delta.astype(np.float64)))
    cap = part.weight_cap
    expected_weight = device_weight(result.num_examples, cap) * policy.weight(tau, norm)
    if function == "fedbuff":
        assert policy.weight(tau, norm) == pytest.approx(1 / np.sqrt(1 + tau))
    else:
        assert policy.weight(tau, norm) < 1 / np.sqrt(1 + tau)  # large stale update: damped further
    # Bit-exact: the weight limbs of the device's encoded vector hold round(w * s(tau) * 2^16).
    config = CodecConfig(**{**part.codec.to_dict(), "expected_clients": len(part.roster.member_ids)})
    encoder = UpdateEncoder(config, part.dim)
    limbs = part.encoded[encoder.data_length :].astype(np.int64)
    grid = sum(int(v) << (encoder.weights.limb_bits * j) for j, v in enumerate(limbs))
    assert grid == round(expected_weight * 2**16)


async def test_slow_device_trains_ahead_without_taking_a_roster_slot(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    policy = StalenessPolicy("fedbuff", max_staleness=3)
    windows = PhaseWindows(keys=5, shares=8, masked=4, unmask=8)
    cfg = agg_config(
        broker, tmp_path, keys, staleness=policy, min_clients=4, target_clients=5, windows=windows
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key)
        straggler = devices[0]
        straggler.trainer.delay, straggler.trainer.every_time = 5.0, True  # always longer than 4 s
        advertised: list[set[str]] = []
        bases: list[int | None] = []

        async def after_round() -> None:
            advertised.append(set(agg.last_secure.adverts))
            pending = straggler._pending
            bases.append(None if pending is None else pending.base)
            await eventually(lambda: pending is None or pending.task.done(), 15, what="straggler trained")

        results = await run_rounds(agg, devices, 4, between=after_round)
    assert [r.status for r in results] == ["closed"] * 4
    cid = straggler.client_id
    # Round 0: no training time measured yet, so it joins, and misses the masked window; round 1: it
    # sends that delta one version stale. Round 2: it knows it needs ~5 s > 4 s, so it trains on v2
    # without advertising keys (its slot goes to a device that can fill it) ...
    assert [cid in a for a in advertised] == [True, True, False, True]
    assert bases[2] == 2
    # ... and contributes that delta to round 3, one version stale.
    assert straggler.stats.staleness == [1, 1]
    assert straggler.last_train_s is not None and straggler.last_train_s > windows.masked


class KnownSlowTrainer(SlowTrainer):
    """A slow device's start-up estimate says so (``LocalTrainer.estimate_seconds``)."""

    def estimate_seconds(self):
        return super().estimate_seconds() + self.delay


async def test_slow_new_device_trains_ahead_from_its_first_round(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    windows = PhaseWindows(keys=5, shares=8, masked=4, unmask=8)
    cfg = agg_config(
        broker, tmp_path, keys, staleness=StalenessPolicy("fedbuff", max_staleness=3), min_clients=4,
        target_clients=5, windows=windows,
    )  # fmt: skip
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = secure_devices(
            broker, digits, keys, agg.verify_key, FED, seed=3, trainer_cls=KnownSlowTrainer
        )
        straggler = devices[0]
        straggler.trainer.delay, straggler.trainer.every_time = 5.0, True
        advertised: list[set[str]] = []

        async def after_round() -> None:
            advertised.append(set(agg.last_secure.adverts))
            pending = straggler._pending
            await eventually(lambda: pending is None or pending.task.done(), 15, what="straggler trained")

        results = await run_rounds(agg, devices, 2, between=after_round)
    assert [r.status for r in results] == ["closed", "closed"]
    # Its start-up estimate (> 5 s) exceeds the 4 s masked window: it trains on v0 without advertising
    # and sends that delta to round 1, one version stale. Fast devices estimated well under 4 s.
    assert [straggler.client_id in a for a in advertised] == [False, True]
    assert len(advertised[0]) == 5 and straggler.stats.staleness == [1]
    assert all(d.last_train_s is not None and d.last_train_s < windows.masked for d in devices[1:])


async def test_deltas_older_than_max_staleness_never_reach_the_aggregate(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    policy = StalenessPolicy("fedbuff", max_staleness=0)
    cfg = agg_config(broker, tmp_path, keys, staleness=policy, min_clients=4, target_clients=6)
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key)
        devices[0].trainer.delay = 6.0
        results = await run_rounds(agg, devices, 4)
    assert all(r.status == "closed" for r in results)
    assert results[0].contributors == 5
    assert all(tau == 0 for d in devices for tau in d.stats.staleness)  # nothing stale was ever sent
    assert sum(r.contributors for r in results) == sum(len(d.stats.staleness) for d in devices)


async def test_buffered_close_at_k_with_over_selection(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    cfg = agg_config(broker, tmp_path, keys, target_clients=4, over_selection=1.25,
                     windows=PhaseWindows(keys=10, shares=10, masked=60, unmask=10))  # fmt: skip
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key)
        t0 = time.monotonic()
        results = await run_rounds(agg, devices, 1)
        elapsed = time.monotonic() - t0
        secure = agg.last_secure
    assert len(secure.adverts) == 5  # ceil(1.25 * 4) admitted, the sixth refused
    assert results[0].status == "closed" and results[0].contributors == 4  # closed at K ...
    # ... long before the 60 s masked window (the bound leaves a loaded machine its connects and phases;
    # the keys and shares phases close as soon as they are complete, so their wider windows cost nothing)
    assert elapsed < 40
    # The sixth advert is refused: over the admission limit, or after the keys phase closed on it.
    assert any("over-selection" in r or "keys message in phase" in r for _, r in agg.dropped)


async def test_partial_training_respects_the_smallest_budget(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    total = model.dim
    blocks = model.layout.blocks()
    budget = first_block_budget(model, digits)
    budgets = {"dev-00": budget, "dev-01": 10 * budget}
    cfg = agg_config(broker, tmp_path, keys, partial_training=True, min_clients=6, target_clients=6)
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key, budgets)
        before = agg.weights.copy()
        after_round: list[np.ndarray] = []

        async def keep_weights() -> None:
            after_round.append(agg.weights.copy())

        results = await run_rounds(
            agg, devices, 2, ready=lambda: len(agg.memory_budgets) == 2, between=keep_weights
        )
        secure = agg.last_secure
    assert [r.status for r in results] == ["closed", "closed"]
    # Round 0 trains block 0 only, round 1 rotates to block 1 (which alone fits too).
    assert results[0].metrics["trained_fraction"] == pytest.approx(blocks[0].size / total)
    assert results[1].metrics["trained_fraction"] == pytest.approx(blocks[1].size / total)
    # Each device's encoded vector covered exactly the announced block (plus weight limbs).
    announced = secure.dim
    assert announced == blocks[1].size
    for device in devices:
        assert device.secure_round.dim == announced
        assert device.secure_round.encoded.size == UpdateEncoder(secure.config, announced).encoded_length
    # The rotation is {block 0}, {block 1}: each block trains every other round, so the server applies
    # twice the decoded mean (rotation_step) -- exactly, against the devices' own encodings.
    assert results[1].metrics["rotation_scale"] == 2.0
    summed = np.zeros(secure.total.size, np.uint32)
    for device in devices:
        np.add(summed, device.secure_round.encoded, out=summed)
    summed &= np.uint32((1 << secure.config.bits) - 1)
    mean, _ = UpdateDecoder(secure.config, announced).decode(summed, 6)
    start, stop = blocks[1].offset, blocks[1].offset + blocks[1].size
    expected = after_round[0].copy()
    expected[start:stop] = (after_round[0][start:stop] + 1.0 * (mean * np.float32(2.0))).astype(np.float32)
    np.testing.assert_array_equal(after_round[1], expected)
    moved = np.flatnonzero(agg.weights != before)
    assert moved.min() >= 0 and set(
        np.unique(np.searchsorted([b.offset for b in blocks], moved, "right") - 1)
    ) <= {0, 1}


async def test_stale_delta_of_other_blocks_waits_for_a_round_of_its_blocks(broker, tmp_path, digits):
    keys = enrol(6)
    model, weights = initial_weights()
    total = model.dim
    blocks = model.layout.blocks()
    budget = first_block_budget(model, digits)  # rounds alternate blocks 0, 1, 0
    budgets = {cid: budget for cid in keys}
    cfg = agg_config(
        broker,
        tmp_path,
        keys,
        partial_training=True,
        min_clients=4,
        target_clients=6,
        staleness=StalenessPolicy("fedbuff", max_staleness=3),
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = fleet(broker, digits, keys, agg.verify_key, budgets)
        straggler = devices[0]
        straggler.trainer.delay = 6.0  # misses round 0's masked window (4 s)

        async def straggler_done() -> None:
            # Deterministic order: the straggler's block-0 delta is ready before round 1 (block 1) opens.
            pending = straggler._pending
            await eventually(lambda: pending is None or pending.task.done(), 15, what="straggler trained")

        results = await run_rounds(
            agg, devices, 3, ready=lambda: len(agg.memory_budgets) == 6, between=straggler_done
        )
    fractions = [r.metrics["trained_fraction"] for r in results]
    first, second = blocks[0].size / total, blocks[1].size / total
    assert fractions == pytest.approx([first, second, first])
    # Round 1 (block 1): the straggler keeps its stale block-0 delta instead of discarding it ...
    assert [r.contributors for r in results] == [5, 5, 6]
    # ... and contributes it to round 2 (block 0 again), two versions stale.
    assert straggler.stats.staleness == [2]
