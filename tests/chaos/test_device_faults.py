"""Devices that die in each secure phase, and device links that drop in each phase.

A crashed device leaves exactly the survivors' sum (its input is in the sum iff its masked input
arrived); a dropped link costs nothing once the device reconnects within the window.
"""

from __future__ import annotations

import asyncio

import pytest

from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient
from simulator.faultproxy import FaultProxy
from tests.chaos.helpers import Ledger, devices_for, make_aggregator, run_secure, secure_values, versions_ok
from tests.support import enrol

pytestmark = pytest.mark.broker
N = 6
# Short windows: a crashed device holds its phase open until the deadline.
WINDOWS = PhaseWindows(keys=10, shares=6, masked=10, unmask=8)


def crash_after(device: EdgeClient, phase: str, crashes: list[asyncio.Task], ledger: Ledger):
    def hook(done: str) -> None:
        if done == phase and not crashes:
            if device.secure_round is not None:  # the oracle needs its encoding; a crash forgets it
                ledger.crashed[device.client_id] = device.secure_round
            crashes.append(asyncio.get_running_loop().create_task(device.crash()))

    return hook


@pytest.mark.parametrize(
    "phase, in_sum",
    [
        pytest.param("keys", False, marks=pytest.mark.long),
        ("shares", False),
        ("masked", True),
        pytest.param("unmask", True, marks=pytest.mark.long),
    ],
)
async def test_device_crash_after_each_phase_leaves_exactly_the_survivors_sum(
    broker, tmp_path, digits, phase, in_sum
):
    keys = enrol(N)
    crashes: list[asyncio.Task] = []
    values = secure_values(N, windows=WINDOWS, min_clients=4)
    async with make_aggregator(tmp_path, keys, values, broker.url) as agg:
        devices = devices_for(lambda cid: broker.url, broker, digits, keys, agg)
        victim = devices[0]
        ledger = Ledger()
        victim.phase_hook = crash_after(victim, phase, crashes, ledger)
        await run_secure(agg, devices, 1, ledger=ledger)
        await asyncio.gather(*crashes, return_exceptions=True)
        assert versions_ok(agg) == []
    assert crashes, "the victim never reached the phase"
    expected = {d.client_id for d in devices} - (set() if in_sum else {victim.client_id})
    assert ledger.rounds == [(0, "closed", len(expected))]
    assert ledger.summed == [frozenset(expected)]
    assert ledger.exact == [True]


@pytest.mark.parametrize(
    "phase",
    [pytest.param("keys", marks=pytest.mark.long), "masked", pytest.param("unmask", marks=pytest.mark.long)],
)
async def test_every_device_link_dropped_in_a_phase_costs_no_contribution(broker, tmp_path, digits, phase):
    keys = enrol(N)
    proxies = {cid: FaultProxy(broker.port) for cid in keys}
    for proxy in proxies.values():
        await proxy.start()
    drops: list[int] = []
    try:
        async with make_aggregator(tmp_path, keys, secure_values(N), broker.url) as agg:
            devices = devices_for(lambda cid: proxies[cid].url, broker, digits, keys, agg)

            def hook(done: str) -> None:
                if done == phase and not drops:  # the first device through: the rest are mid-phase
                    drops.append(sum(p.drop() for p in proxies.values()))

            for device in devices:
                device.phase_hook = hook
            ledger = await run_secure(agg, devices, 2)
            assert versions_ok(agg) == []
    finally:
        for proxy in proxies.values():
            await proxy.close()
    assert drops and drops[0] == N
    assert [(status, count) for _, status, count in ledger.rounds] == [("closed", N)] * 2
    assert ledger.exact == [True, True]
