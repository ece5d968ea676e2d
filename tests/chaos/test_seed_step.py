"""The pair-seed step survives a broker crash that loses the acknowledged seed reveals.

A rogue dealer (garbage share bundles) is excluded after the unmask reveals, so the aggregator asks its
neighbours for their pair seeds with it in a signed ``SeedRequest`` (docs/protocol.md, the pair-seed step).
The moment the first device sees that request, the aggregator's link goes down (a fault proxy that refuses
it), so every neighbour's seed reveal is acknowledged by the broker and queued there for the aggregator.
Then the broker is SIGKILLed with nothing saved (``autosave_interval_s=0``): the queued reveals, the
retained request and every session are gone. The aggregator's link comes back, it re-publishes the open
phase (the request among it), and each neighbour must re-send its seed reveal from its delivery ledger, or
the round cannot cancel the pair masks with the rogue and is lost.

Invariants: the round closes with the exact sum of the honest devices' encodings (bit-exact), the rogue
left out; every neighbour's ledger re-sent its seed reveal (kind ``seeds``) and still holds its unmask
reveal until the next round's announcement confirms both.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_client.client import EdgeClient
from edge_client.delivery import SEEDS
from shared.errors import FedmqError
from shared.topics import UNMASK
from shared.wire import decode
from shared.wire.seeds import SeedRequest
from simulator.broker import MosquittoBroker
from simulator.faultproxy import FaultProxy
from tests.adversarial.test_secagg_self_healing import ROGUE, RogueClient
from tests.chaos.helpers import FED, Ledger, devices_for, make_aggregator, run_secure, secure_values
from tests.support import directory_of, enrol, eventually

pytestmark = pytest.mark.broker
N = 7


def _is_seed_request(payload: bytes) -> bool:
    try:
        decode(payload, SeedRequest)
    except FedmqError:
        return False
    return True


def cut_on_seed_request(device: EdgeClient, link: FaultProxy, cut: asyncio.Event) -> None:
    """The first time any device is handed a seed request, take the aggregator's link down, synchronously,
    before this (or any) device can answer it: every seed reveal then queues at the broker."""
    original = device.handle

    def handle(topic: str, payload: bytes) -> None:
        if not cut.is_set() and topic == device.topics.notice and _is_seed_request(payload):
            link.refuse(True)
            link.drop()
            cut.set()
        original(topic, payload)

    device.handle = handle  # type: ignore[method-assign]


def answered(device: EdgeClient) -> bool:
    """Its seed reveal is acknowledged by the broker: five contributions sent (keys, shares, masked input,
    unmask reveal, seed reveal) and none still being sent."""
    deliveries = device.outbox.deliveries
    in_flight = any(
        (entry := deliveries.get(*key)) is not None and entry.sending for key in deliveries.outstanding()
    )
    return deliveries.stats.sent >= 5 and not in_flight


async def test_seed_reveals_lost_in_a_broker_crash_are_re_sent(tmp_path, digits):
    keys = enrol(N)
    cut = asyncio.Event()
    broker = MosquittoBroker(tmp_path / "broker", autosave_interval_s=0).start()
    crashed: list[list[str]] = []
    held: set[str] = set()
    try:
        async with FaultProxy(broker.port) as link:
            values = secure_values(N, min_clients=4)
            async with make_aggregator(tmp_path, keys, values, link.url) as agg:
                devices = devices_for(lambda cid: broker.url, broker, digits, keys, agg)
                rogue = next(d for d in devices if d.client_id == ROGUE)
                rogue._secagg = RogueClient(FED, ROGUE, keys[ROGUE], agg.verify_key, directory_of(keys))
                honest = [d for d in devices if d.client_id != ROGUE]
                for device in devices:
                    cut_on_seed_request(device, link, cut)

                async def fault(index: int) -> None:
                    await cut.wait()
                    secure = agg._secure
                    assert secure is not None and secure.server is not None
                    server = secure.server
                    asked = set(server.exclusion.waiting_for(server.graph, server.masked))
                    waiting = [d for d in honest if d.client_id in asked]
                    await eventually(lambda: all(answered(d) for d in waiting), 30, what="seed reveals acked")
                    crashed.append(sorted(asked))
                    held.update(server.exclusion.revealed_seeds)  # what reached the aggregator: none
                    broker.kill()  # nothing saved: the queued reveals and the retained request are lost
                    broker.start()
                    link.refuse(False)  # the aggregator reconnects and re-publishes the open phase

                ledger: Ledger = await run_secure(agg, devices, 1, fault=fault, timeout=120)
                stats = {d.client_id: d.outbox.deliveries.stats for d in honest}
                outstanding = {d.client_id: d.outbox.deliveries.outstanding() for d in honest}
                secure = agg.last_secure
    finally:
        broker.close()
    assert crashed, "the broker never crashed in the seed step"
    asked = crashed[0]
    assert asked and ROGUE not in asked
    assert held == set()  # every seed reveal was still queued at the broker when it died
    assert ledger.rounds == [(0, "closed", N - 1)]
    assert ledger.summed == [frozenset(d.client_id for d in honest)]  # the rogue is out of the sum
    assert ledger.exact == [True]  # bit-exact: the honest devices' encodings, nothing lost
    assert secure is not None and secure.server is not None
    assert ROGUE in secure.server.exclusion.dealers
    for cid in asked:  # each neighbour's seed reveal came back by its ledger's re-send
        assert stats[cid].by_kind.get(SEEDS, 0) >= 1, (cid, stats[cid])
        # ...and the seed reveal did not replace the unmask reveal: both wait for the next announcement
        assert (0, UNMASK) in outstanding[cid] and (0, SEEDS) in outstanding[cid], outstanding[cid]
