"""A resilient MQTT v5 connection on aiomqtt, shared by the aggregator and the devices.

aiomqtt does not reconnect by itself, so :class:`MqttConnection` owns the documented reconnection
pattern: a background task connects with a stable client id and a persistent session
(``clean_start=False`` plus a session expiry, so QoS 1 messages queued at the broker while we were away
are delivered on return), re-subscribes on every connect, backs off exponentially with full jitter
between attempts, and feeds every incoming message into one queue that survives reconnects. Presence
is a retained topic with a last will that the broker publishes after a *Will Delay*, so a short network
blip does not flap a device offline.

Every wait has a deadline: :meth:`MqttConnection.wait_connected` and :meth:`MqttConnection.publish`
raise :class:`MqttTimeout` instead of hanging, and publish deadlines scale with the payload size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.chunking import split
from shared.errors import ConfigError, FedmqError
from shared.supervision import guarded
from shared.topics import check_id

log = logging.getLogger(__name__)


class MqttTimeout(FedmqError, TimeoutError):
    """A connection or publication did not complete before its deadline."""


@dataclass(frozen=True)
class MqttConfig:
    """How to reach the broker. Validated on construction; errors name the field."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "fedmq"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 15.0
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 10.0
    #: Slowest link we plan for; publish deadlines grow by size / this rate.
    link_bytes_per_s: float = 250_000.0
    will_delay_s: int = 10
    max_queued_incoming: int = 100_000

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host", "must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError("port", f"{self.port} is not a TCP port")
        check_id(self.client_id, "client_id")
        if (self.username is None) != (self.password is None):
            raise ConfigError("password", "username and password must be given together")
        for name in ("keepalive_s", "session_expiry_s", "will_delay_s", "max_queued_incoming"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0")
        for name in ("reconnect_min_s", "connect_timeout_s", "publish_timeout_s", "link_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be > 0")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("reconnect_max_s", "must be >= reconnect_min_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("key_file", "cert_file and key_file must be given together")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ConfigError("tls", "certificate files given but tls is off")

    @classmethod
    def from_url(cls, url: str, client_id: str, **overrides: object) -> MqttConfig:
        """Build from ``mqtt://[user:pass@]host[:port]`` (``mqtts://`` turns TLS on)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError("broker", f"unsupported URL scheme {parts.scheme!r} in {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError("broker", f"bad port in {url!r}") from exc
        values: dict[str, object] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "client_id": client_id,
            "username": parts.username,
            "password": parts.password,
            "tls": tls,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def publish_deadline(self, size: int) -> float:
        return self.publish_timeout_s + size / self.link_bytes_per_s


@dataclass(frozen=True)
class Presence:
    """Retained presence: ``online`` published on every connect, ``offline`` as the delayed will."""

    topic: str
    online: bytes
    offline: bytes


@dataclass
class _Stats:
    connects: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    publishes: int = 0


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
        #: Set when the current connection dies: a publish awaiting its PUBACK there gives up at once.
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = _Stats()
        self._rng = random.Random()
        self._callbacks: list[asyncio.Task[None]] = []

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._connected.clear()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash or a lost link would (tests, faults)."""
        client = self._client
        if client is not None:
            sock = client._client.socket()  # paho's socket; closing it is what a dead link looks like
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        timeout = self.config.connect_timeout_s if timeout is None else timeout
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError as exc:
            raise MqttTimeout(
                f"no connection to {self.config.host}:{self.config.port} within {timeout:.1f}s"
            ) from exc

    # -- messages --------------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Add a subscription that is kept across reconnects."""
        if topic not in self._subscriptions:
            self._subscriptions.append(topic)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(topic, qos=1, timeout=self.config.connect_timeout_s)

    async def unsubscribe(self, topic: str) -> None:
        """Drop a subscription (also from the set renewed after reconnects)."""
        if topic in self._subscriptions:
            self._subscriptions.remove(topic)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic, timeout=self.config.connect_timeout_s)

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
        instead of filling offline devices' queues.
        """
        budget = self.config.publish_deadline(len(payload)) if timeout is None else timeout
        deadline = time.monotonic() + budget
        properties = None
        if expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, int(expiry_s))
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttTimeout(f"publish to {topic} ({len(payload)} B) did not complete in time")
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
                client = self._client
                if client is None:
                    continue
                # aiomqtt never fails a publish whose connection died: race it against the loss, and
                # send again on the next connection (QoS 1: the receiver deduplicates).
                lost = asyncio.ensure_future(self._lost.wait())
                sending = asyncio.ensure_future(
                    client.publish(topic, payload, qos=qos, retain=retain, properties=properties,
                                   timeout=remaining)
                )  # fmt: skip
                stranded = True
                try:
                    await asyncio.wait([sending, lost], timeout=remaining, return_when="FIRST_COMPLETED")
                    stranded = not sending.done()
                finally:
                    lost.cancel()
                    if not sending.done():  # also when this publish itself is cancelled
                        sending.cancel()
                        sending.add_done_callback(_retrieve)
                if stranded:
                    attempt += 1
                    log.debug("publish to %s stranded by a lost connection, retry %d", topic, attempt)
                    continue
                sending.result()  # raises what the publish raised
                self.stats.bytes_out += len(payload)
                self.stats.publishes += 1
                return
            except asyncio.TimeoutError:
                continue
            except aiomqtt.MqttError as exc:
                attempt += 1
                log.debug("publish to %s failed (%s), retry %d", topic, exc, attempt)
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    # -- the reconnect loop ----------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        cfg = self.config
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = cfg.session_expiry_s
        will = None
        if self._presence is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = cfg.will_delay_s
            will = aiomqtt.Will(
                self._presence.topic, self._presence.offline, qos=1, retain=True, properties=will_props
            )
        tls_params = None
        if cfg.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file
            )
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_props,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            will=will,
            tls_params=tls_params,
            max_queued_incoming_messages=cfg.max_queued_incoming,
            logger=logging.getLogger(f"{__name__}.paho"),
        )

    async def _run(self) -> None:
        cfg = self.config
        failures = 0
        while not self._closing:
            try:
                async with self._make_client() as client:
                    self._client = client
                    self._lost = asyncio.Event()
                    for topic in list(self._subscriptions):
                        await client.subscribe(topic, qos=1, timeout=cfg.connect_timeout_s)
                    self.stats.connects += 1
                    failures = 0
                    self._connected.set()
                    log.info(
                        "mqtt %s connected to %s:%d (connect #%d)",
                        cfg.client_id,
                        cfg.host,
                        cfg.port,
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
                failures += 1
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
                self._client = None
                self._lost.set()
            if not self._closing:
                await asyncio.sleep(delay if failures else cfg.reconnect_min_s)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Consume the outcome of an abandoned publish (it is retried elsewhere), so nothing is left unread."""
    if not task.cancelled():
        task.exception()


async def publish_framed(
    conn: MqttConnection,
    topic: str,
    chunk_topic: Callable[[int], str],
    payload: bytes,
    limit: int,
    *,
    retain: bool = False,
    expiry_s: float | None = None,
) -> int:
    """Publish ``payload`` whole or, above ``limit``, as chunks then manifest; returns the frame count.

    Chunks go first so that a subscriber that sees the manifest finds its chunks already retained.
    """
    frames = split(payload, limit)
    for frame in frames[1:] + frames[:1]:
        target = topic if frame.chunk is None else chunk_topic(frame.chunk)
        await conn.publish(target, frame.payload, retain=retain, expiry_s=expiry_s)
    return len(frames)
