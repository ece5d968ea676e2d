"""An enrolled device that sends an update far beyond the clip, over a real Mosquitto with the shipped ACL
rules and the real engine: its rounds are refused (never applied), the hunt's cohorts name it within
a few rounds (never an honest device), it is quarantined, and rounds close again with the exact sum of
the honest devices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aggregator.engine import Aggregator
from aggregator.hunt import BEYOND_CLIP
from aggregator.secure import PhaseWindows
from simulator.chaos import exact_sum
from tests.support import (
    broker_with_accounts,
    enrol,
    initial_snapshot,
    run_rounds,
    secure_config,
    secure_devices,
)

pytestmark = pytest.mark.broker
FED = "clip"
N = 6
ROGUE = "dev-05"
BITS = 16


def _amplify(mask):
    """The rogue's masking step: its encoding times 40 first (data coordinates; weights left alone)."""

    def amplified(x, shared, workers=1, in_place=False):
        y = x.astype(np.uint64)
        y[: len(y) // 2] *= 40
        return mask((y % (1 << BITS)).astype(np.uint32), shared, workers, False)

    return amplified


async def test_a_rogue_beyond_the_clip_is_named_quarantined_and_rounds_close_again(tmp_path, digits):
    keys = enrol(N)
    broker, creds = broker_with_accounts(keys, tmp_path / "broker", FED)
    windows = PhaseWindows(keys=15, shares=15, masked=30, unmask=15)
    cfg = secure_config(tmp_path, FED, creds("aggregator"), keys, windows=windows, min_clients=3, bits=BITS)
    try:
        async with Aggregator(cfg, initial=initial_snapshot(FED)) as agg:
            devices = secure_devices(broker, digits, keys, agg.verify_key, FED, mqtt=creds)
            rogue = next(d for d in devices if d.client_id == ROGUE)
            rogue._secagg.mask = _amplify(rogue._secagg.mask)  # type: ignore[method-assign, union-attr]

            def named_then_closed() -> bool:  # ...and a round after the naming closed
                return bool(agg.offences.senders(BEYOND_CLIP)) and agg.results[-1].status == "closed"

            results = await run_rounds(agg, devices, 12, timeout=600, until=named_then_closed)
            secure = agg.last_secure
            offences = agg.offences.by_sender()
    finally:
        broker.stop()
    refused = [r for r in results if r.status == "abandoned" and "aggregate refused" in r.reason]
    assert offences.get(ROGUE, {}).get(BEYOND_CLIP) == 1, offences
    assert all(BEYOND_CLIP not in rules for device, rules in offences.items() if device != ROGUE)
    assert len(refused) <= math.ceil(math.log2(N)) + 2, [r.reason for r in results]
    assert all(r.status == "closed" or "aggregate refused" in r.reason for r in results), results
    last = results[-1]
    assert last.status == "closed", last.reason
    assert secure is not None and secure.server is not None and ROGUE not in secure.server.masked
    plain = exact_sum([d.secure_round.encoded for d in devices if d.client_id in secure.server.masked], BITS)
    np.testing.assert_array_equal(secure.total, plain)  # the honest survivors' exact sum
    state = json.loads((tmp_path / "agg" / "quarantine.json").read_text())
    assert state[ROGUE]["rule"] == BEYOND_CLIP and state[ROGUE]["offences"] == 1
