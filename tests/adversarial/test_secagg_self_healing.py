"""The round a rogue attacks closes, over a real Mosquitto with the shipped ACL (usernames = device ids).

One enrolled rogue beside six honest devices deals garbage, re-wrapped or inconsistent share bundles to
every neighbour. Before self-healing (shared/secagg/exclusion.py) that cost the first round; now the
FIRST round closes with the exact sum of the honest devices' encodings, the rogue is left out of the sum,
named in a log line and counted in the aggregator's offence counter, and no honest device is named.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import nacl.utils
import numpy as np
import pytest

from aggregator.engine import Aggregator
from aggregator.metrics import Metrics
from aggregator.secure import PhaseWindows
from shared.secagg import SecAggClient, shamir
from shared.secagg.attribution import BUNDLES_REFUSED, INCONSISTENT_DEALER
from simulator.chaos import exact_sum
from tests.support import (
    broker_with_accounts,
    directory_of,
    enrol,
    initial_snapshot,
    run_rounds,
    secure_config,
    secure_devices,
)

pytestmark = pytest.mark.broker
FED = "heal"
ROGUE = "dev-00"  # sorts first among the neighbours of every honest device


class RogueClient(SecAggClient):
    """Honest code except for the bundles it deals (the attack chosen by ``attack``)."""

    attack = "garbage"

    def on_roster(self, roster):  # type: ignore[no-untyped-def]
        return self._attacked(lambda: super(RogueClient, self).on_roster(roster))

    def on_compact_roster(self, roster, neighbour_keys):  # type: ignore[no-untyped-def]
        return self._attacked(lambda: super(RogueClient, self).on_compact_roster(roster, neighbour_keys))

    def _attacked(self, deal):  # type: ignore[no-untyped-def]
        original = shamir.split
        if self.attack == "inconsistent":  # shares off any one polynomial; digests published for them

            def inconsistent(secret: bytes, threshold: int, holders: int) -> list[bytes]:
                shares = original(secret, threshold, holders)
                return [nacl.utils.random(shamir.SHARE_BYTES) if i else s for i, s in enumerate(shares)]

            shamir.split = inconsistent
        try:
            bundles = deal()
        finally:
            shamir.split = original
        if self.attack == "garbage":
            return [replace(b, ciphertext=nacl.utils.random(len(b.ciphertext))) for b in bundles]
        if self.attack == "rewrapped":  # valid bundles, each handed to another neighbour
            rotated = bundles[1:] + bundles[:1]
            return [replace(b, ciphertext=c.ciphertext) for b, c in zip(bundles, rotated)]
        return bundles


@pytest.mark.parametrize(
    ("attack", "rule"),
    [("garbage", BUNDLES_REFUSED), ("rewrapped", BUNDLES_REFUSED), ("inconsistent", INCONSISTENT_DEALER)],
)
async def test_the_first_attacked_round_closes_with_the_exact_honest_sum(
    tmp_path, digits, caplog, attack: str, rule: str
) -> None:
    keys = enrol(7)
    broker, creds = broker_with_accounts(keys, tmp_path / "broker", FED)
    try:
        windows = PhaseWindows(keys=15, shares=15, masked=20, unmask=15)
        cfg = secure_config(tmp_path, FED, creds("aggregator"), keys, windows=windows, min_clients=4)
        caplog.set_level(logging.WARNING)
        async with Aggregator(cfg, initial=initial_snapshot(FED)) as agg:
            devices = secure_devices(broker, digits, keys, agg.verify_key, FED, mqtt=creds)
            rogue = next(d for d in devices if d.client_id == ROGUE)
            assert rogue._secagg is not None
            rogue._secagg = RogueClient(FED, ROGUE, keys[ROGUE], agg.verify_key, directory_of(keys))
            rogue._secagg.attack = attack
            results = await run_rounds(agg, devices, 1)
            secure = agg.last_secure
            named = agg.offences.by_sender()
            exposition = Metrics(agg).render()
    finally:
        broker.stop()
    assert results[0].status == "closed", results[0].reason
    assert results[0].round_id == 0 and results[0].contributors == 6  # the first round
    honest = [d for d in devices if d.client_id != ROGUE]
    assert secure is not None and secure.server is not None and secure.total is not None
    assert secure.server.masked == frozenset(d.client_id for d in honest)
    expected = exact_sum([d.secure_round.encoded for d in honest], secure.config.bits)
    np.testing.assert_array_equal(secure.total, expected)  # bit-exact: the honest devices' sum
    assert named.get(ROGUE, {}).get(rule) == 1
    assert f'fedmq_offences_total{{rule="{rule}"}} 1' in exposition  # and in the aggregator's metrics
    assert not [s for s in named if s != ROGUE], named  # no honest device named
    assert any(f"from={ROGUE}" in r.getMessage() and rule in r.getMessage() for r in caplog.records)
