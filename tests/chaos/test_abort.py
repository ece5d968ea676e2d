"""A connection aborted as a crash would be (``MqttConnection.abort``) leaves nothing behind in the event
loop: the next socket the process opens, which the kernel may give the same file descriptor number, is
read from as usual (a stale reader registration would leave it deaf: no CONNACK, a connect timeout and a
fall back to MQTT 3.1.1, as the aggregator restarted in tests/chaos/test_aggregator_crash.py once did)."""

from __future__ import annotations

import asyncio

import pytest

from shared.mqtt import MqttConnection, MqttTimeout
from simulator.process import free_port
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


async def test_a_publish_waiting_for_a_connection_fails_at_once_when_the_connection_is_closed():
    """What a task cancelled mid-round meets when its cleanup publishes on a connection closed under it (the
    crashed aggregator's round loop in test_aggregator_crash): an error now, not its whole deadline."""
    nobody = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: the connection never comes up
    conn = MqttConnection(link_config(nobody, "closing", publish_timeout_s=600.0))
    await conn.__aenter__()
    try:
        waiting = asyncio.create_task(conn.publish("t/closed", b"x"))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # waiting for a connection...
    finally:
        await conn.close(graceful=False)
    with pytest.raises(MqttTimeout, match="closed"):
        await asyncio.wait_for(waiting, 30)  # ...and told at once that none will come
    with pytest.raises(MqttTimeout, match="closed"):
        await asyncio.wait_for(conn.publish("t/closed", b"y"), 30)
