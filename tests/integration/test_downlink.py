"""Downlink: up-to-date devices follow bit-exact snapshot deltas; a device that fell behind fetches the
full retained snapshot."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.snapshots import make_snapshot
from tests.support import initial_weights, make_devices, mqtt_config

pytestmark = pytest.mark.broker
FED = "down"


async def test_devices_follow_deltas_and_a_lagging_device_catches_up(broker, tmp_path, digits):
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        mode="plain",
        min_clients=3,
        target_clients=3,
        round_window_s=20,
        snapshot_encoding="f16",
        enrolled=frozenset(f"dev-{i:03d}" for i in range(3)),
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        lagging = make_devices(broker, digits, 1, agg.verify_key, FED, prefix="lag")[0]
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for device in [*devices, lagging]:
                await stack.enter_async_context(device)
            tasks = [asyncio.create_task(d.run(stop)) for d in devices]
            lag_stop = asyncio.Event()
            lag_task = asyncio.create_task(lagging.run(lag_stop))
            run = asyncio.create_task(agg.run(3))
            await lagging.wait_for_version(0, timeout=30)
            lag_stop.set()  # the lagging device stops listening (offline) ...
            await lag_task
            await lagging.conn.close(graceful=False)
            try:
                await asyncio.wait_for(run, timeout=60)
                await asyncio.gather(*(d.wait_for_version(3, timeout=30) for d in devices))
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        published = agg.published_weights
        for device in devices:
            assert device.stats.deltas >= 2  # v1->v2 and v2->v3 at least came as deltas
            np.testing.assert_array_equal(device.weights, published)  # bit-exact
        # ... and comes back three versions behind: the delta does not apply, it fetches the full snapshot.
        returning = make_devices(broker, digits, 1, agg.verify_key, FED, prefix="lag")[0]
        returning.trainer = lagging.trainer
        async with returning:
            returning.version, returning.weights = lagging.version, lagging.weights
            run = asyncio.create_task(returning.run(stop := asyncio.Event()))
            await returning.wait_for_version(3, timeout=30)
            stop.set()
            await run
        np.testing.assert_array_equal(returning.weights, published)
