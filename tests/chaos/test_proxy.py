"""The fault proxy really makes the link misbehave, and the MQTT connection rides every fault out.

A publish stranded on a connection that died goes out again on the next one at once, rather than
waiting out its whole deadline (issue 14, part 1): checked here with a deadline far beyond the test's.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.mqtt import MqttConnection
from simulator.faultproxy import FaultProxy
from tests.chaos.helpers import link_config
from tests.support import eventually

pytestmark = pytest.mark.broker


async def receive(conn: MqttConnection, count: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < count and loop.time() < deadline:
        msg = await conn.next_message(timeout=0.5)
        if msg is not None:
            got.append(bytes(msg.payload))
    return got


async def test_drop_reconnects_and_a_stranded_publish_goes_out_on_the_new_connection(broker):
    async with FaultProxy(broker.port) as proxy:
        sub_cfg = link_config(broker.url, "listener")
        pub_cfg = link_config(proxy.url, "talker", publish_timeout_s=600.0)
        async with MqttConnection(sub_cfg, ["chaos/t"]) as sub, MqttConnection(pub_cfg) as pub:
            await sub.wait_connected()
            await pub.wait_connected()
            await pub.publish("chaos/t", b"before")
            assert await receive(sub, 1, 10) == [b"before"]
            stall = asyncio.create_task(proxy.stall(3600))  # the PUBACK cannot come back...
            sending = asyncio.create_task(pub.publish("chaos/t", b"stranded"))
            await asyncio.sleep(0.3)
            assert proxy.drop() == 1  # ...and then the link dies under it
            stall.cancel()
            await asyncio.wait_for(sending, 60)  # far inside its 600 s deadline
            assert pub.stats.connects >= 2 and proxy.connections >= 2
            assert b"stranded" in await receive(sub, 1, 10)


async def test_stall_holds_bytes_then_delivers_them(broker):
    async with FaultProxy(broker.port) as proxy:
        async with (
            MqttConnection(link_config(broker.url, "listener"), ["chaos/s"]) as sub,
            MqttConnection(link_config(proxy.url, "talker")) as pub,
        ):
            await sub.wait_connected()
            await pub.wait_connected()
            # Stalled until the test ends it (a timed stall could run out before a loaded machine gets
            # to the check below).
            stall = asyncio.create_task(proxy.stall(3600))
            await asyncio.sleep(0)
            up_before = proxy.bytes_up
            sending = asyncio.create_task(pub.publish("chaos/s", b"held"))
            await asyncio.sleep(0.5)
            assert proxy.bytes_up == up_before  # nothing got through while stalled
            assert not sending.done()
            stall.cancel()  # the stall ends: the held bytes flow
            with contextlib.suppress(asyncio.CancelledError):
                await stall
            await asyncio.wait_for(sending, 30)
            assert await receive(sub, 1, 10) == [b"held"]
            assert proxy.drops == 0 and pub.stats.connects == 1  # a stall is not a reconnect


async def test_throttled_link_still_delivers_a_large_payload(broker):
    async with FaultProxy(broker.port) as proxy:
        proxy.throttle(64 * 1024)
        payload = bytes(range(256)) * 512  # 128 KiB at 64 KiB/s
        async with (
            MqttConnection(link_config(broker.url, "listener"), ["chaos/b"]) as sub,
            MqttConnection(link_config(proxy.url, "talker")) as pub,
        ):
            await sub.wait_connected()
            await pub.wait_connected()
            await asyncio.wait_for(pub.publish("chaos/b", payload), 60)
            assert await receive(sub, 1, 20) == [payload]
            assert proxy.bytes_up >= len(payload)


async def test_half_open_link_is_noticed_by_keepalive_and_replaced(broker):
    async with FaultProxy(broker.port) as proxy:
        async with MqttConnection(link_config(proxy.url, "talker", keepalive_s=1)) as pub:
            await pub.wait_connected()
            assert proxy.half_open() == 1  # the client's socket stays open and silent
            await eventually(lambda: pub.stats.connects >= 2 and pub.connected, 30, what="a new connection")
            await pub.publish("chaos/h", b"after")


async def test_refused_link_keeps_the_client_retrying_until_it_is_back(broker):
    """A refused attempt (the link reset before CONNACK) ends at once, rather than waiting out a CONNACK
    that cannot come: with a connect timeout longer than the test's wait, the client is back in time."""
    async with FaultProxy(broker.port) as proxy:
        async with MqttConnection(link_config(proxy.url, "talker", connect_timeout_s=120.0)) as pub:
            await pub.wait_connected()
            proxy.refuse(True)
            proxy.drop()
            await eventually(lambda: not pub.connected, 10, what="the link down")
            await asyncio.sleep(1.0)
            assert not pub.connected
            proxy.refuse(False)
            await pub.wait_connected(timeout=30)
            assert pub.stats.connects >= 2
