"""`fedmq-demo --tls`: the started broker gets a TLS listener whose mqtts:// URL (with its CA) every client
of the demo uses."""

from __future__ import annotations

import pytest

from shared.mqtt import MqttConfig, MqttConnection
from simulator.broker import MosquittoBroker
from simulator.demo import _with_tls_listener

pytestmark = pytest.mark.broker


async def test_the_demo_broker_speaks_tls_to_the_url_it_hands_out(tmp_path):
    broker = MosquittoBroker(tmp_path / "broker")
    url_of = _with_tls_listener(broker, tmp_path / "tls")
    with broker:
        url = url_of(broker)
        config = MqttConfig.from_url(url, client_id="probe")
        assert url.startswith("mqtts://localhost:") and config.tls and config.ca_file
        async with MqttConnection(config, ["t/#"]) as conn:
            await conn.wait_connected(30)
            await conn.publish("t/x", b"over tls")
            msg = await conn.next_message(timeout=30)
            assert msg is not None and msg.payload == b"over tls"
