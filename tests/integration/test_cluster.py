"""A 3-node NATS cluster (JetStream + MQTT, loopback): one node is SIGKILLed mid-round and rounds go on.

Devices are spread over the three nodes (each lists all three, starting at its own); the aggregator sits
on the node that dies. Sessions, retained state and QoS 1 queues are replicated JetStream streams, so the
clients of the dead node fail over to the next endpoint and find their sessions there.
"""

from __future__ import annotations

import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.topics import Topics
from simulator.nats import NatsCluster
from tests.integration.test_rounds import initial_snapshot
from tests.support import make_devices, mqtt_url_config, run_rounds

pytestmark = pytest.mark.broker
FED = "test"
DEVICES = 6
ROUNDS = 4
KILLED = 0  # the aggregator's node


async def test_rounds_keep_closing_when_a_cluster_node_is_killed(tmp_path, digits):
    with NatsCluster(tmp_path / "cluster", size=3) as cluster:
        cfg = AggregatorConfig(
            federation=FED,
            mqtt=mqtt_url_config(cluster.url_from(KILLED), "aggregator"),
            store_dir=tmp_path / "agg",
            mode="plain",
            round_window_s=40.0,
            min_clients=3,
            target_clients=DEVICES,
            keep_journal_rounds=ROUNDS + 1,  # keep every accepted update for the audit below
        )
        async with Aggregator(cfg, initial=initial_snapshot()) as agg:
            devices = make_devices(
                None, digits, DEVICES, agg.verify_key, FED, url_for=lambda i: cluster.url_from(i % 3)
            )
            on_killed = [d for i, d in enumerate(devices) if i % 3 == KILLED]
            killed_at: list[int] = []
            ingest = agg._ingest

            def ingest_then_kill(topic: str, payload: bytes, replay: bool = False) -> None:
                # Rounds of this small model last well under a second, so the kill is tied to an event:
                # round 1 has accepted two updates, the others are in training or in flight.
                ingest(topic, payload, replay)
                opened = agg._round
                in_round_1 = opened is not None and opened.round_id == 1
                if not killed_at and in_round_1 and len(opened.contributors) >= 2:
                    killed_at.append(len(opened.contributors))
                    cluster.nodes[KILLED].kill()

            agg._ingest = ingest_then_kill  # type: ignore[method-assign]
            results = await run_rounds(agg, devices, ROUNDS, timeout=300)
            topics = Topics(FED)
            accepted = {
                r.round_id: {topics.parse_round(topic).sender for topic, _ in agg.store.frames(r.round_id)}
                for r in results
            }
            versions = agg.store.versions()

    assert killed_at and 2 <= killed_at[0] < DEVICES, "the node was not killed mid-round"
    assert [r.status for r in results] == ["closed"] * ROUNDS, results
    assert versions == list(range(ROUNDS + 1))
    # No acknowledged update lost: every update a device had PUBACKed is in its round's aggregate.
    for r in results:
        acked = {d.client_id for d in devices if r.round_id in d.contributed}
        assert acked <= accepted[r.round_id], (r.round_id, acked - accepted[r.round_id])
        assert r.contributors == len(accepted[r.round_id])
    # The aggregator and the devices of the dead node moved to another node and kept contributing.
    assert agg._conn is not None and agg._conn.stats.failovers >= 1
    assert all(d.conn.stats.failovers >= 1 for d in on_killed)
    last = results[-1].round_id
    assert {d.client_id for d in on_killed} <= accepted[last]
