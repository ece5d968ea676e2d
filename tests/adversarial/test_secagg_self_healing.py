"""The round a rogue attacks closes, over a real Mosquitto with the shipped ACL (usernames = device ids).

One enrolled rogue beside six honest devices deals garbage, re-wrapped or inconsistent share bundles to
every neighbour. Before self-healing (shared/secagg/exclusion.py) that cost the first round; now the
FIRST round closes with the exact sum of the honest devices' encodings, the rogue is left out of the sum,
named in a log line and counted in the aggregator's offence counter, and no honest device is named.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

import nacl.utils
import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.metrics import Metrics
from aggregator.secure import PhaseWindows
from shared.codec import CodecConfig
from shared.secagg import SecAggClient, shamir
from shared.secagg.attribution import BUNDLES_REFUSED, INCONSISTENT_DEALER
from shared.snapshots import make_snapshot
from simulator.broker import MosquittoBroker
from tests.support import directory_of, enrol, initial_weights, mqtt_config, run_rounds, secure_devices

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
    accounts = {user: secrets.token_hex(8) for user in [*keys, "aggregator"]}
    broker = MosquittoBroker.with_accounts(accounts, tmp_path / "broker", federation=FED).start()
    try:

        def creds(user: str):  # type: ignore[no-untyped-def]
            return mqtt_config(broker, user, username=user, password=accounts[user])

        model, weights = initial_weights()
        cfg = AggregatorConfig(
            federation=FED,
            mqtt=creds("aggregator"),
            store_dir=tmp_path / "agg",
            directory=directory_of(keys),
            codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
            windows=PhaseWindows(keys=15, shares=15, masked=20, unmask=15),
            min_clients=4,
            target_clients=7,
        )
        caplog.set_level(logging.WARNING)
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
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
    expected = np.zeros_like(secure.total)
    for device in honest:
        np.add(expected, device.secure_round.encoded, out=expected)
    expected &= np.uint32((1 << secure.config.bits) - 1)
    np.testing.assert_array_equal(secure.total, expected)  # bit-exact: the honest devices' sum
    assert named.get(ROGUE, {}).get(rule) == 1
    assert f'fedmq_offences_total{{rule="{rule}"}} 1' in exposition  # and in the aggregator's metrics
    assert not [s for s in named if s != ROGUE], named  # no honest device named
    assert any(f"from={ROGUE}" in r.getMessage() and rule in r.getMessage() for r in caplog.records)
