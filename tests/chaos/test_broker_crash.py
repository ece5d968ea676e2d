"""Broker SIGKILL and restart with the shipped persistence settings (autosave every 30 s).

Invariants: every contribution whose device reconnected within the window is in the round's sum (bit-exact
against the devices' own encodings), versions stay contiguous, and an update the broker acknowledged is
never lost because the broker crashed before the aggregator read it.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.snapshots import make_snapshot
from simulator.chaos import ShippedMosquitto, shipped_persistence
from simulator.faultproxy import FaultProxy
from tests.chaos.helpers import (
    FED,
    BrokerKiller,
    devices_for,
    link_config,
    make_aggregator,
    run_secure,
    secure_values,
    versions_ok,
)
from tests.support import enrol, eventually, initial_weights, make_devices

pytestmark = pytest.mark.broker


@pytest.fixture
def shipped(tmp_path):
    broker = ShippedMosquitto(tmp_path / "broker").start()
    yield broker
    broker.close()


def test_the_shipped_config_is_what_the_fault_runs_face():
    settings = shipped_persistence()
    # The campaign's finding: a crash loses up to this many seconds of acknowledged messages. If the
    # shipped config changes, the tests here follow it (ShippedMosquitto reads it).
    assert settings["persistence"] == "true" and int(settings["autosave_interval"]) >= 1


async def kill_and_restart(broker, pause: float = 0.3) -> None:
    broker.kill()
    await asyncio.sleep(pause)
    broker.start()


@pytest.mark.parametrize("phase", ["masked"])
async def test_broker_sigkill_in_a_secure_phase_loses_no_contribution(shipped, tmp_path, digits, phase):
    n, rounds = 6, 3
    keys = enrol(n)
    async with make_aggregator(tmp_path, keys, secure_values(n), shipped.url) as agg:
        devices = devices_for(lambda cid: shipped.url, shipped, digits, keys, agg)
        killer = BrokerKiller(shipped, devices, phase)
        ledger = await run_secure(agg, devices, rounds, fault=killer.fault)
        reconnected = all(d.conn.stats.connects >= 1 + rounds for d in devices)
        assert versions_ok(agg) == []
    assert killer.kills == list(range(rounds))  # the broker really died in that phase of every round
    assert [(status, count) for _, status, count in ledger.rounds] == [("closed", n)] * rounds
    assert ledger.exact == [True] * rounds  # bit-exact: every device's input is in its round's sum
    assert reconnected  # every device lived through every kill


async def test_acknowledged_updates_survive_a_broker_crash_with_the_aggregator_offline(
    shipped, tmp_path, digits
):
    """Issue 14: six updates PUBACKed while the aggregator was away, then the broker was SIGKILLed."""
    model, weights = initial_weights()
    n = 6
    async with FaultProxy(shipped.port) as link:
        cfg = AggregatorConfig(
            federation=FED,
            mqtt=link_config(link.url, "aggregator"),
            store_dir=tmp_path / "agg",
            mode="plain",
            round_window_s=90.0,
            min_clients=n,
            target_clients=n,
            snapshot_encoding="f32",
        )
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
            devices = make_devices(shipped, digits, n, agg.verify_key, FED)
            run = asyncio.create_task(agg.run(1))
            await eventually(lambda: agg._round is not None, 20, what="round 0 announced")
            link.refuse(True)  # the aggregator's link goes down and stays down
            link.drop()
            stop = asyncio.Event()
            async with contextlib.AsyncExitStack() as stack:
                for device in devices:
                    await stack.enter_async_context(device)
                tasks = [asyncio.create_task(d.run(stop)) for d in devices]
                try:
                    # Every update acknowledged by the broker (and queued there for the aggregator)...
                    def acknowledged() -> bool:
                        joined = all(d.stats.rounds_joined == 1 for d in devices)
                        return joined and not any(d.outbox.deliveries.stats.failed for d in devices)

                    await eventually(acknowledged, 60, what="six acknowledged updates")
                    assert len(agg._round.contributors) == 0  # ...none read by the aggregator yet
                    await kill_and_restart(shipped)  # long before the 30 s autosave
                    link.refuse(False)
                    results = await asyncio.wait_for(run, 90)
                finally:
                    stop.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
            assert versions_ok(agg) == []
    assert [(r.status, r.contributors) for r in results] == [("closed", n)]
    assert (
        sum(d.outbox.deliveries.stats.resent for d in devices) >= n
    )  # each came back by its device's re-send
    assert np.linalg.norm(agg.weights - weights) > 0


@pytest.mark.long
@pytest.mark.parametrize("phase", ["shares", "masked", "unmask"])
async def test_broker_sigkill_in_each_phase_ten_rounds(shipped, tmp_path, digits, phase):
    n, rounds = 8, 10
    keys = enrol(n)
    async with make_aggregator(tmp_path, keys, secure_values(n), shipped.url) as agg:
        devices = devices_for(lambda cid: shipped.url, shipped, digits, keys, agg)
        killer = BrokerKiller(shipped, devices, phase)
        ledger = await run_secure(agg, devices, rounds, fault=killer.fault, timeout=1200)
        assert versions_ok(agg) == []
    assert killer.kills == list(range(rounds))  # the broker really died in that phase of every round
    closed_whole = sum(1 for _, status, count in ledger.rounds if status == "closed" and count == n)
    assert closed_whole >= 0.9 * rounds, ledger.rounds
    assert all(ledger.exact)
