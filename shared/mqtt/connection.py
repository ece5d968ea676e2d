"""The resilient connection itself: :class:`MqttConnection` (reconnect loop, subscriptions, publish with
deadlines and re-sends). See :mod:`shared.mqtt` for the design."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.chunking import CHUNK_OVERHEAD
from shared.connect_errors import Refusals
from shared.errors import FedmqError
from shared.mqtt.config import (
    PUBLISH_OVERHEAD,
    BrokerLimits,
    BrokerRefused,
    ConnectionStats,
    MqttConfig,
    MqttTimeout,
    PacketTooLarge,
    Presence,
)
from shared.mqtt.handshake import make_client, read_limits, refuses_version
from shared.supervision import guarded

log = logging.getLogger("shared.mqtt")


class MqttConnection:
    """One logical MQTT session that outlives TCP connections.

    Use as ``async with MqttConnection(cfg, ["a/#"]) as conn:``; iterate :meth:`messages` and call
    :meth:`publish`. Subscriptions given here (or added with :meth:`subscribe`) are renewed after every
    reconnect; ``on_connect`` callbacks run after each (re)connect.
    """

    def __init__(
        self,
        config: MqttConfig,
        subscriptions: Sequence[str] = (),
        presence: Presence | None = None,
        on_connect: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.config = config
        self._subscriptions: list[str] = list(subscriptions)
        self._presence = presence
        self._on_connect = list(on_connect)
        self._queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=config.max_queued_incoming)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = ConnectionStats()
        self._rng = random.Random()
        self._callbacks: list[asyncio.Task[None]] = []
        #: The broker's limits on the current (or last) connection; None before the first connect.
        self.limits: BrokerLimits | None = None
        #: Set when the broker refuses this configuration for good; waits raise it.
        self.error: FedmqError | None = None
        self._gave_up = asyncio.Event()
        #: Set by :meth:`close`: a publish waiting for a connection then fails at once (none will come).
        self._closed = asyncio.Event()
        self._refusals = Refusals(config, f"{__name__}.paho")  # wrong credentials, TLS: give up after N
        #: Set when the current connection ends (a fresh event per connection).
        self._lost = asyncio.Event()
        #: Protocol that each endpoint accepted (auto mode remembers a fallback to 3.1.1).
        self._protocols: dict[tuple[str, int], str] = {}
        self._warned: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> MqttConnection:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.config.client_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, graceful: bool = True) -> None:
        """Stop the session. ``graceful`` publishes ``offline`` first (a crash leaves it to the will)."""
        if self._closing:
            return
        if graceful and self._presence and self._connected.is_set():
            with contextlib.suppress(Exception):
                await self.publish(self._presence.topic, self._presence.offline, retain=True, timeout=2.0)
        self._closing = True
        self._closed.set()
        self._refusals.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._connected.clear()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash or a lost link would (tests, faults)."""
        client = self._client
        if client is not None:
            sock = client._client.socket()  # paho's; ending its TCP link is what a dead link looks like
            if sock is not None:
                # Shut it down, never close it here: the event loop still watches its descriptor, and a
                # closed one cannot be unregistered (its number reads -1), so the next socket to get that
                # number would never be read (no CONNACK: a connect timeout). After a shutdown the reader
                # sees end-of-file, and paho unregisters and closes the socket itself.
                raw = sock if hasattr(sock, "shutdown") else getattr(sock, "_socket", None)  # websockets
                if raw is not None:
                    with contextlib.suppress(OSError):
                        raw.shutdown(socket.SHUT_RDWR)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        timeout = self.config.connect_timeout_s if timeout is None else timeout
        if self.error is not None:
            raise self.error
        waits = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._gave_up.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if self.error is not None:
            raise self.error
        if not self._connected.is_set():
            where = ", ".join(f"{h}:{p}" for h, p in self.config.endpoints)
            raise MqttTimeout(f"no connection to {where} within {timeout:.1f}s")

    # -- messages --------------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Add a subscription that is kept across reconnects."""
        if topic not in self._subscriptions:
            self._subscriptions.append(topic)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                for each in self._filters(topic):
                    await client.subscribe(each, qos=1, timeout=self.config.connect_timeout_s)

    async def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (also from the set renewed after reconnects)."""
        if topic in self._subscriptions:
            self._subscriptions.remove(topic)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                for each in self._filters(topic):
                    await client.unsubscribe(each, timeout=self.config.connect_timeout_s)

    def _filters(self, topic: str) -> list[str]:
        """The topic filters that carry subscription ``topic``: itself, plus the exact parent of a
        ``/#`` filter on brokers that send retained messages only to exact subscriptions."""
        if self.config.retained_wildcards or not topic.endswith("/#"):
            return [topic]
        return [topic, topic[:-2]]

    async def messages(self) -> AsyncIterator[aiomqtt.Message]:
        while True:
            yield await self._queue.get()

    async def next_message(self, timeout: float) -> aiomqtt.Message | None:
        """The next incoming message, or None after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish with at-least-once delivery, retrying across reconnects until the deadline.

        ``expiry_s`` sets the MQTT v5 message expiry so round-scoped messages die with their round
        instead of filling offline devices' queues (under 3.1.1 it is dropped; receivers check the
        round id and deadline the message carries). QoS and retain are lowered to what the broker
        announced. Raises :class:`PacketTooLarge` at once if the payload cannot fit the broker's packet
        limit (use :func:`publish_framed` for payloads that may be large).
        """
        if self.error is not None:
            raise self.error
        budget = self.config.publish_deadline(len(payload)) if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttTimeout(f"publish to {topic} ({len(payload)} B) did not complete in time")
            if not self._connected.is_set():
                if not await self._until_connected(remaining):
                    raise MqttTimeout(f"publish to {topic}: the connection is closed")
                continue  # connected, or out of time: checked again above
            try:
                client = self._client
                limits = self.limits
                if client is None or limits is None:
                    continue
                packet = len(payload) + len(topic.encode()) + PUBLISH_OVERHEAD
                if limits.max_packet_size is not None and packet > limits.max_packet_size:
                    raise PacketTooLarge(
                        f"publish to {topic} ({len(payload)} B) exceeds the broker's maximum packet size "
                        f"({limits.max_packet_size} B at {limits.endpoint})"
                    )
                properties = None
                if expiry_s is not None and limits.protocol == "5":
                    properties = Properties(PacketTypes.PUBLISH)
                    properties.MessageExpiryInterval = max(1, int(expiry_s))
                if retain and not limits.retain_available:
                    self._warn_once("retain", f"broker at {limits.endpoint} has no retained messages: "
                                    "late devices will wait for the next publication")  # fmt: skip
                sending = asyncio.ensure_future(
                    client.publish(
                        topic,
                        payload,
                        qos=min(qos, limits.max_qos),
                        retain=retain and limits.retain_available,
                        properties=properties,
                        timeout=remaining,
                    )
                )
                # A PUBACK owed by a connection that died never comes (each connection is a new client):
                # send again on the next one at once rather than wait out the deadline. Receivers
                # de-duplicate, so at-least-once stays exactly what they count.
                lost = asyncio.ensure_future(self._lost.wait())
                try:
                    await asyncio.wait([sending, lost], timeout=remaining, return_when=FIRST_COMPLETED)
                except BaseException:
                    sending.cancel()
                    raise
                finally:
                    lost.cancel()
                if not sending.done():
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await sending
                    if self._lost.is_set():
                        log.info("mqtt %s: connection lost before PUBACK on %s; sending again",
                                 self.config.client_id, topic)  # fmt: skip
                    continue
                sending.result()
                self.stats.bytes_out += len(payload)
                self.stats.publishes += 1
                return
            except asyncio.TimeoutError:
                continue
            except aiomqtt.MqttError as exc:
                attempt += 1
                log.debug("publish to %s failed (%s), retry %d", topic, exc, attempt)
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def _until_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a connection; False if the connection is closed (meanwhile or
        already): a publish waiting on a closed connection would otherwise wait out its whole deadline
        (a task cancelled mid-round whose cleanup publishes, say)."""
        if not self._closing:
            waits = [asyncio.ensure_future(event.wait()) for event in (self._connected, self._closed)]
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        return not self._closing

    def frame_limit(self, topic: str, limit: int) -> int:
        """The largest frame to publish on ``topic`` (or its chunk topics): ``limit``, lowered to fit the
        broker's maximum packet size with the MQTT header and chunk topic suffix."""
        limits = self.limits
        cap = limits.max_packet_size if limits is not None else self.config.max_packet_size
        if cap is None:
            return limit
        fit = cap - len(topic.encode()) - len("/c/") - 10 - PUBLISH_OVERHEAD
        return max(CHUNK_OVERHEAD + 64, min(limit, fit))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("mqtt %s: %s", self.config.client_id, message)

    # -- the reconnect loop ----------------------------------------------------------------------

    def _protocol_for(self, endpoint: tuple[str, int]) -> str:
        if self.config.protocol != "auto":
            return self.config.protocol
        return self._protocols.get(endpoint, "5")

    async def _run(self) -> None:
        cfg = self.config
        endpoints = cfg.endpoints
        index = 0
        last: tuple[str, int] | None = None
        failures = 0
        while not self._closing:
            endpoint = endpoints[index % len(endpoints)]
            protocol = self._protocol_for(endpoint)
            where = f"{endpoint[0]}:{endpoint[1]}"
            answered = False
            attempt = make_client(cfg, self._presence, endpoint, protocol, self._refusals.logger)
            try:
                async with attempt as client:
                    answered = True
                    self._client = client
                    self._lost = asyncio.Event()
                    self._protocols[endpoint] = protocol
                    self.limits = read_limits(client, cfg, where, protocol)
                    for topic in [f for t in self._subscriptions for f in self._filters(t)]:
                        await client.subscribe(topic, qos=1, timeout=cfg.connect_timeout_s)
                    self.stats.connects += 1
                    if last is not None and last != endpoint:
                        self.stats.failovers += 1
                    last = endpoint
                    failures = 0
                    self._refusals.count = 0
                    self._connected.set()
                    log.info(
                        "mqtt %s connected to %s over MQTT %s (connect #%d)",
                        cfg.client_id,
                        where,
                        protocol,
                        self.stats.connects,
                    )
                    if self._presence is not None:
                        await client.publish(
                            self._presence.topic,
                            self._presence.online,
                            qos=1,
                            retain=True,
                            timeout=cfg.publish_timeout_s,
                        )
                    self._callbacks = [
                        asyncio.create_task(guarded(callback(), where=f"mqtt {cfg.client_id} on-connect"))
                        for callback in self._on_connect
                    ]
                    async for msg in client.messages:
                        self.stats.messages_in += 1
                        if isinstance(msg.payload, (bytes, bytearray)):
                            self.stats.bytes_in += len(msg.payload)
                        await self._queue.put(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection task is long-lived: it reconnects, never dies
                if self._refused_version(exc, endpoint, protocol, where):
                    if self.error is not None:
                        return
                    continue  # fall back to 3.1.1 on the same endpoint at once
                if (cause := self._refusals.give_up(exc, where)) is not None:
                    self.error = cause  # wrong credentials or TLS, again and again: waits raise it
                    self._gave_up.set()
                    return
                refused = isinstance(exc, MqttConnectError)  # a CONNACK came: wrong credentials, ...
                if attempt.reached and not answered and not refused and cfg.protocol == "auto":
                    # TCP connected but no CONNACK: some 3.1.1-only brokers (RabbitMQ before 3.13) drop a
                    # v5 CONNECT without answering. Alternate versions until one is answered.
                    other = "3.1.1" if protocol == "5" else "5"
                    self._protocols[endpoint] = other
                    log.info("mqtt %s: no CONNACK from %s over MQTT %s (%s); next try MQTT %s",
                             cfg.client_id, where, protocol, exc, other)  # fmt: skip
                failures += 1
                index += 1  # a cluster's next node (a single broker: the same one again)
                # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
                cap = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2 ** min(failures, 16))
                delay = self._rng.uniform(cfg.reconnect_min_s / 2, cap)
                expected = isinstance(exc, (aiomqtt.MqttError, OSError))
                level = logging.INFO if failures <= 3 else logging.WARNING
                log.log(
                    level if expected else logging.ERROR,
                    "mqtt %s lost/failed connection (%s); retry %d in %.2fs",
                    cfg.client_id,
                    exc,
                    failures,
                    delay,
                    exc_info=None if expected else exc,
                )
            finally:
                self._connected.clear()
                self._lost.set()
                self._client = None
            if not self._closing:
                await asyncio.sleep(delay if failures else cfg.reconnect_min_s)

    def _refused_version(self, exc: Exception, endpoint: tuple[str, int], protocol: str, where: str) -> bool:
        """Handle a CONNACK refusing the protocol version: switch to 3.1.1 (auto) or give up (forced)."""
        if not refuses_version(exc, protocol):
            return False
        if self.config.protocol == "auto":
            log.info("mqtt %s: %s refuses MQTT 5, using 3.1.1", self.config.client_id, where)
            self._protocols[endpoint] = "3.1.1"
        else:
            self.error = BrokerRefused(
                f"the broker at {where} refuses MQTT 5; set protocol='auto' or '3.1.1' "
                "(URL option ?protocol=3.1.1)"
            )
            log.error("mqtt %s: %s", self.config.client_id, self.error)
            self._gave_up.set()
        return True

    async def failed(self) -> FedmqError:
        """Wait until the connection gives up for good (refused configuration); returns the cause."""
        await self._gave_up.wait()
        return self.error or FedmqError("connection gave up")
