"""The aggregator crashes (no goodbye, its connection just dies) in a secure phase and restarts on the
same store: the killed round is abandoned, never applied; the next closes with every device, bit-exact;
versions stay contiguous and signed by the same key."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.chaos.helpers import Ledger, devices_for, make_aggregator, secure_values, versions_ok
from tests.support import enrol

pytestmark = pytest.mark.broker
N = 5


@pytest.mark.parametrize(
    "phase",
    [pytest.param("keys", marks=pytest.mark.long), "masked", pytest.param("unmask", marks=pytest.mark.long)],
)
async def test_aggregator_crash_in_a_phase_abandons_that_round_and_the_next_closes(
    broker, tmp_path, digits, phase
):
    keys = enrol(N)
    values = secure_values(N)
    first = make_aggregator(tmp_path, keys, values, broker.url)
    await first.__aenter__()
    devices = devices_for(lambda cid: broker.url, broker, digits, keys, first)
    reached = asyncio.Event()
    for device in devices:
        device.phase_hook = lambda done: reached.set() if done == phase else None
    stop = asyncio.Event()
    ledger = Ledger()
    async with contextlib.AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(device)
        tasks = [asyncio.create_task(d.run(stop)) for d in devices]
        try:
            run = asyncio.create_task(first.run(1))
            await asyncio.wait_for(reached.wait(), 120)
            run.cancel()  # the crash: the round loop stops where it is...
            assert first._conn is not None
            first._conn.abort()  # ...and the connection dies without a DISCONNECT (nor comes back)
            await first._conn.close(graceful=False)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            await first.__aexit__(None, None, None)
            for device in devices:
                device.phase_hook = None
            async with make_aggregator(tmp_path, keys, values, broker.url) as second:
                assert second.verify_key == first.verify_key
                results = await asyncio.wait_for(second.run(1), 180)
                ledger.record(second, devices)
                assert versions_ok(second) == []
                # Nothing of the killed round lingers in a device's outbox (the next round settled it).
                assert all(r != 0 for d in devices for r, _ in d.outbox.deliveries.outstanding())
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [(r.round_id, r.status) for r in results] == [(0, "abandoned"), (1, "closed")]
    assert "restarted" in results[0].reason
    assert results[1].contributors == N and ledger.exact == [True]
