"""A connection aborted as a crash would be (``MqttConnection.abort``) leaves nothing behind in the event
loop: the next socket the process opens, which the kernel may give the same file descriptor number, is
read from as usual (a stale reader registration would leave it deaf: no CONNACK, a connect timeout and a
fall back to MQTT 3.1.1, as the aggregator restarted in tests/chaos/test_aggregator_crash.py once did)."""

from __future__ import annotations

import asyncio

import pytest

from shared.mqtt import MqttConnection
from tests.chaos.helpers import link_config

pytestmark = pytest.mark.broker


async def test_an_aborted_connection_leaves_the_next_socket_readable(broker):
    for attempt in range(3):  # the freed descriptor number is the lowest, so the next socket reuses it
        crashed = MqttConnection(link_config(broker.url, f"crashed-{attempt}"))
        await crashed.__aenter__()
        try:
            await crashed.wait_connected(30)
            crashed.abort()
        finally:  # as EdgeClient.crash() does

            await crashed.close(graceful=False)
        # A long connect timeout: a deaf socket would wait it out rather than fall back in 5 s.
        async with MqttConnection(link_config(broker.url, f"next-{attempt}", connect_timeout_s=60.0),
                                  ["t/abort"]) as conn:  # fmt: skip
            await conn.wait_connected(20)
            assert conn.limits is not None and conn.limits.protocol == "5"  # answered at once, no fallback
            await asyncio.wait_for(conn.publish("t/abort", b"x"), 20)
            msg = await conn.next_message(20)
            assert msg is not None and msg.payload == b"x"
