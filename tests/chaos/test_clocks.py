"""Clock faults: devices whose wall clock is an hour off or jumps mid-round, an aggregator whose wall clock
jumps. Deadlines are measured on monotonic clocks (``shared.timing``), so every device still
contributes (exact survivor sums), windows hold and versions stay contiguous."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.clock import SkewedClock
from shared.snapshots import make_snapshot
from tests.chaos.helpers import FED, link_config, make_aggregator, run_secure, secure_values, versions_ok
from tests.support import enrol, eventually, initial_weights, make_devices, secure_devices

pytestmark = pytest.mark.broker
HOUR = 3600.0


async def test_devices_an_hour_off_or_jumping_mid_round_still_contribute(broker, tmp_path, digits):
    n, rounds = 6, 2
    keys = enrol(n)
    ids = list(keys)
    clocks = {cid: SkewedClock() for cid in ids}
    clocks[ids[0]].offset_s = HOUR  # an hour ahead
    clocks[ids[1]].offset_s = -HOUR  # an hour behind
    jumps = {ids[2]: ("keys", HOUR), ids[3]: ("shares", -HOUR), ids[4]: ("keys", 2 * HOUR)}
    async with make_aggregator(tmp_path, keys, secure_values(n), broker.url) as agg:
        devices = secure_devices(broker, digits, keys, agg.verify_key, FED, clock_for=clocks.__getitem__)
        jumped: list[str] = []
        for device in devices:
            if device.client_id in jumps:
                phase, by = jumps[device.client_id]

                def hook(done: str, cid: str = device.client_id, phase: str = phase, by: float = by) -> None:
                    if done == phase:  # mid-round: right after this device's message of that phase
                        clocks[cid].jump(by)
                        jumped.append(cid)

                device.phase_hook = hook
        ledger = await run_secure(agg, devices, rounds)
        assert versions_ok(agg) == []
    assert sorted(set(jumped)) == sorted(jumps) and len(jumped) == len(jumps) * rounds
    assert [(status, count) for _, status, count in ledger.rounds] == [("closed", n)] * rounds
    assert ledger.summed == [frozenset(ids)] * rounds
    assert ledger.exact == [True] * rounds


async def test_an_aggregator_wall_clock_jump_breaks_no_secure_window_or_version(broker, tmp_path, digits):
    """The aggregator's clock jumps forward an hour in round 0's masked phase, back two hours in round 1's:
    its windows are monotonic and the devices follow its stamps from the next announcement."""
    n, rounds = 5, 3
    keys = enrol(n)
    clock = SkewedClock()
    async with make_aggregator(tmp_path, keys, secure_values(n), broker.url) as agg:
        agg.clock = clock
        devices = secure_devices(broker, digits, keys, agg.verify_key, FED)
        steps = {0: HOUR, 1: -2 * HOUR}
        done: list[int] = []
        phases: list[str | None] = []

        async def jump(index: int) -> None:
            """Jump as the round's first masked input comes in (the masked phase can end only after it; a
            poll for the phase could miss a phase shorter than its interval)."""
            if index not in steps:
                return
            jumped = asyncio.Event()

            def on_message(topic: str, _payload: bytes) -> None:
                if not jumped.is_set() and f"/r/{index}/masked/" in topic:
                    phases.append(agg._secure.phase if agg._secure is not None else None)
                    clock.jump(steps[index])
                    done.append(index)
                    jumped.set()

            agg.intake_hooks.append(on_message)
            try:
                await asyncio.wait_for(jumped.wait(), 60)
            finally:
                agg.intake_hooks.remove(on_message)

        ledger = await run_secure(agg, devices, rounds, fault=jump)
        assert versions_ok(agg) == []
    assert done == [0, 1] and phases == ["masked", "masked"]
    assert [(status, count) for _, status, count in ledger.rounds] == [("closed", n)] * rounds
    assert ledger.exact == [True] * rounds
    assert all(d.times.steps == 1 for d in devices)  # each device saw the step back, and only that one


async def test_a_plain_round_window_survives_an_aggregator_wall_clock_jump(broker, tmp_path, digits):
    """Plain mode: the aggregator's clock steps an hour back while round 0 is open, so round 1's stamps are
    an hour in the past: the devices follow the step (a device comparing stamps with its own wall clock
    would see round 1 as over), and round 0's monotonic window is untouched."""
    model, weights = initial_weights()
    n = 4
    clock = SkewedClock()
    cfg = AggregatorConfig(federation=FED, mqtt=link_config(broker.url, "aggregator"),
                           store_dir=tmp_path / "agg", mode="plain", round_window_s=60.0,
                           min_clients=n, target_clients=n, snapshot_encoding="f32")  # fmt: skip
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        agg.clock = clock
        devices = make_devices(broker, digits, n, agg.verify_key, FED)
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for device in devices:
                await stack.enter_async_context(device)
            run = asyncio.create_task(agg.run(2))
            await eventually(lambda: agg._round is not None, 30, what="round 0 announced")
            clock.jump(-HOUR)
            tasks = [asyncio.create_task(d.run(stop)) for d in devices]
            try:
                results = await asyncio.wait_for(run, 120)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert versions_ok(agg) == []
    assert [(r.status, r.contributors) for r in results] == [("closed", n)] * 2
    assert all(d.times.steps == 1 for d in devices)
