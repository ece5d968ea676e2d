"""An aggregator restarted on an empty store with the same key adopts its retained model, so devices that
hold it keep training (versions and round ids go on); one with another key clears the predecessor's
retained state instead of leaving devices on it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil

import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.store import Store
from aggregator.takeover import read_retained, supersede_predecessor
from shared.dp import DPConfig
from shared.errors import IncompatibleError
from shared.snapshots import make_snapshot
from tests.support import directory_of, enrol, initial_weights, make_devices, mqtt_config

pytestmark = pytest.mark.broker
FED = "takeover"


def config(broker, store, **kw) -> AggregatorConfig:
    values = dict(federation=FED, mqtt=mqtt_config(broker, "aggregator"), store_dir=store, mode="plain",
                  round_window_s=30.0, min_clients=2, target_clients=2)  # fmt: skip
    values.update(kw)
    return AggregatorConfig(**values)


async def test_a_fresh_store_with_the_same_key_adopts_the_retained_model(broker, tmp_path, digits):
    model, weights = initial_weights()
    initial = make_snapshot(FED, 0, -1, model.layout, weights)
    first = Aggregator(config(broker, tmp_path / "a"), initial=initial)
    devices = make_devices(broker, digits, 2, first.verify_key, FED)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(device)
        tasks = [asyncio.create_task(d.run(stop)) for d in devices]
        try:
            async with first:
                results = await asyncio.wait_for(first.run(2), 120)
            assert [r.status for r in results] == ["closed", "closed"] and first.version == 2
            # The store is lost; the key survives (it is the federation's identity, from `fedmq init`).
            (tmp_path / "b").mkdir()
            shutil.copy(tmp_path / "a" / "aggregator.key", tmp_path / "b" / "aggregator.key")
            shutil.rmtree(tmp_path / "a")
            fresh = config(broker, tmp_path / "b")
            assert await supersede_predecessor(fresh, first.verify_key) == "adopted v2"
            store = Store(tmp_path / "b")
            assert store.versions() == [2] and store.last_round().round_id == 1
            store.close()
            async with Aggregator(fresh, initial=initial) as second:
                assert second.version == 2
                results = await asyncio.wait_for(second.run(1), 120)
            # The devices (never restarted, holding v2) took part: versions and round ids go on.
            assert [(r.round_id, r.status, r.contributors) for r in results] == [(2, "closed", 2)]
            assert second.version == 3
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_another_key_clears_the_predecessors_retained_state(broker, tmp_path):
    model, weights = initial_weights()
    initial = make_snapshot(FED, 0, -1, model.layout, weights)
    async with Aggregator(config(broker, tmp_path / "a"), initial=initial) as first:
        assert await first.run(0) == []  # connects and publishes its v0 snapshot
        for _ in range(100):
            if (await read_retained(config(broker, tmp_path / "probe"), settle_s=0.3)).snapshot is not None:
                break
    fresh = config(broker, tmp_path / "b")  # a new store: a new key
    done = await supersede_predecessor(fresh, b"\x00" * 32)
    assert done == "superseded another aggregator's retained state"
    assert (await read_retained(fresh, settle_s=0.5)).snapshot is None


async def test_with_differential_privacy_an_empty_store_is_not_papered_over(broker, tmp_path):
    model, weights = initial_weights()
    initial = make_snapshot(FED, 0, -1, model.layout, weights)
    first = Aggregator(config(broker, tmp_path / "a"), initial=initial)
    async with first:
        assert await first.run(0) == []
        for _ in range(100):
            if (await read_retained(config(broker, tmp_path / "probe"), settle_s=0.3)).snapshot is not None:
                break
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "aggregator.key", tmp_path / "b" / "aggregator.key")
    dp = DPConfig(mode="central", noise_multiplier=1.0, delta=1e-5, clip_norm=5.0)
    fresh = config(broker, tmp_path / "b", mode="secure", directory=directory_of(enrol(3)), dp=dp)
    with pytest.raises(IncompatibleError, match="restore the store"):
        await supersede_predecessor(fresh, first.verify_key)
