"""A resilient MQTT connection on aiomqtt, shared by the aggregator and the devices.

aiomqtt does not reconnect by itself, so :class:`MqttConnection` owns the documented reconnection
pattern: a background task connects with a stable client id and a persistent session
(``clean_start=False`` plus a session expiry, so QoS 1 messages queued at the broker while we were away
are delivered on return), re-subscribes on every connect, backs off exponentially with full jitter
between attempts, and feeds every incoming message into one queue that survives reconnects. Presence
is a retained topic with a last will that the broker publishes after a *Will Delay*, so a short network
blip does not flap a device offline.

Brokers differ (``docs/brokers.md``), so the connection adapts to the one it reaches:

* **Protocol.** MQTT 5 is preferred; ``protocol="auto"`` falls back to 3.1.1 when the broker refuses
  v5 (NATS, RabbitMQ before 3.13), ``"3.1.1"`` forces it. Under 3.1.1 the session is kept with
  ``clean_session=False`` (its lifetime is the broker's setting), the will fires without a delay
  (presence may flap during a blip; every connect re-publishes ``online``), and message expiry is
  dropped: round-scoped messages already carry their round id and the announcement its deadline, and
  receivers ignore what belongs to a closed round.
* **Limits.** What the broker announces in CONNACK (v5: maximum packet size, retain available, maximum
  QoS) is honoured: frames are cut below the packet limit, QoS and the retain flag are lowered (with one
  warning) rather than getting us disconnected. ``max_packet_size`` in the config covers brokers that
  cannot announce one (MQTT 3.1.1; NATS's ``max_payload``, AWS IoT Core's 128 KB).
* **Endpoints.** A broker cluster is a list of endpoints; after a failed connect or a lost connection the
  next one is tried, so a dead node costs one reconnect. The session and its queued messages live in
  the cluster, not in the node.

Every wait has a deadline: :meth:`MqttConnection.wait_connected` and :meth:`MqttConnection.publish`
raise :class:`MqttTimeout` instead of hanging, and publish deadlines scale with the payload size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.chunking import CHUNK_OVERHEAD, split
from shared.connect_errors import Refusals
from shared.errors import ConfigError, FedmqError
from shared.supervision import guarded
from shared.topics import check_id

log = logging.getLogger(__name__)


class MqttTimeout(FedmqError, TimeoutError):
    """A connection or publication did not complete before its deadline."""


class BrokerRefused(FedmqError):
    """The broker refuses what this configuration insists on (e.g. MQTT 5 forced on a 3.1.1 broker);
    retrying cannot help, so the connection stops and says what to change."""


class PacketTooLarge(FedmqError):
    """A single (unchunkable) publication exceeds the broker's maximum packet size."""


#: ``MqttConfig.protocol`` values: prefer v5 and fall back, or force one version.
PROTOCOLS = ("auto", "5", "3.1.1")
#: CONNACK codes for "unsupported protocol version" (v5 reason 0x84, v3.1.1 return code 1).
_REFUSED_VERSION = (0x84, 1)
#: Bytes an MQTT PUBLISH adds around topic and payload: fixed header (<= 5), topic length (2), packet
#: id (2) and v5 properties (message expiry: 5, property length: <= 4), with room to spare.
PUBLISH_OVERHEAD = 32


def parse_endpoint(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``host[:port]`` or ``mqtt://host[:port]`` -> (host, port); ConfigError on anything else."""
    parts = urlsplit(text if "://" in text else f"mqtt://{text}")
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError("broker", f"bad port in endpoint {text!r}") from exc
    if not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError("broker", f"endpoint {text!r} is not host[:port]")
    return parts.hostname, port


@dataclass(frozen=True)
class BrokerLimits:
    """What the broker of the current connection accepts (from its CONNACK and the config)."""

    protocol: str  # "5" or "3.1.1"
    endpoint: str  # host:port
    max_packet_size: int | None = None
    retain_available: bool = True
    max_qos: int = 2


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
    #: Permanent refusals in a row (credentials, TLS) before giving up (``shared/connect_errors.py``).
    fatal_retries: int = 3
    #: "auto" (MQTT 5, falling back to 3.1.1 when the broker refuses 5), "5" or "3.1.1".
    protocol: str = "auto"
    #: Further endpoints of the same broker cluster (``host:port``), tried in turn after ``host:port``.
    failover: tuple[str, ...] = ()
    #: Largest MQTT packet the broker takes, for brokers that do not announce one in CONNACK (3.1.1,
    #: NATS ``max_payload``, AWS IoT Core 128 KB). The smaller of this and an announced limit is used.
    max_packet_size: int | None = None
    #: False for brokers that send retained messages to exact subscriptions only (RabbitMQ before 3.13):
    #: each ``a/b/#`` subscription then also subscribes ``a/b``, so a late device still gets the retained
    #: snapshot, delta and round announcement at once (chunks of a chunked snapshot still need ``#``).
    retained_wildcards: bool = True

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host", "must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError("port", f"{self.port} is not a TCP port")
        check_id(self.client_id, "client_id")
        if (self.username is None) != (self.password is None):
            raise ConfigError("password", "username and password must be given together")
        counts = ("keepalive_s", "session_expiry_s", "will_delay_s", "max_queued_incoming", "fatal_retries")
        for name in counts:
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0")
        for name in ("reconnect_min_s", "connect_timeout_s", "publish_timeout_s", "link_bytes_per_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be > 0")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("reconnect_max_s", "must be >= reconnect_min_s")
        if self.protocol not in PROTOCOLS:
            raise ConfigError("protocol", f"{self.protocol!r} is not one of {PROTOCOLS}")
        for endpoint in self.failover:
            parse_endpoint(endpoint)
        if self.max_packet_size is not None and self.max_packet_size < 1024:
            raise ConfigError("max_packet_size", "must be >= 1024 bytes")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("key_file", "cert_file and key_file must be given together")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ConfigError("tls", "certificate files given but tls is off")

    @classmethod
    def from_url(cls, url: str, client_id: str, **overrides: object) -> MqttConfig:
        """Build from ``mqtt://[user:pass@]host[:port][,host2:port2...][?protocol=3.1.1&max_packet_size=N]``.

        ``mqtts://`` turns TLS on. Further comma-separated endpoints are failover nodes of the same
        cluster (same credentials, same TLS). The query sets ``protocol``, ``max_packet_size`` and
        ``retained_wildcards`` (0/1), so every command line that takes a broker URL can reach any
        supported broker.
        """
        url, _, query = url.partition("?")
        first, *others = [part.strip() for part in url.split(",")]
        parts = urlsplit(first)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError("broker", f"unsupported URL scheme {parts.scheme!r} in {url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        default_port = 8883 if tls else 1883
        try:
            port = parts.port or default_port
        except ValueError as exc:
            raise ConfigError("broker", f"bad port in {url!r}") from exc
        values: dict[str, object] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "client_id": client_id,
            "username": parts.username,
            "password": parts.password,
            "tls": tls,
            "failover": tuple(
                "{}:{}".format(*parse_endpoint(other, default_port)) for other in others if other
            ),
        }
        for key, items in parse_qs(query, strict_parsing=bool(query)).items():
            if key == "protocol":
                values["protocol"] = items[-1]
            elif key == "retained_wildcards":
                if items[-1] not in ("0", "1", "true", "false"):
                    raise ConfigError("retained_wildcards", f"{items[-1]!r} is not 0/1/true/false")
                values["retained_wildcards"] = items[-1] in ("1", "true")
            elif key == "ca_file":  # a URL alone can then describe a TLS broker (the demo, tools)
                values["ca_file"] = items[-1]
            elif key == "max_packet_size":
                if not items[-1].isdigit():
                    raise ConfigError("max_packet_size", f"{items[-1]!r} is not a byte count")
                values["max_packet_size"] = int(items[-1])
            else:
                raise ConfigError(
                    "broker",
                    f"unknown URL option {key!r} (protocol, max_packet_size, retained_wildcards, ca_file)",
                )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """Every endpoint, the primary first."""
        return [(self.host, self.port), *(parse_endpoint(e) for e in self.failover)]

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
    #: Connects to an endpoint other than the previous connection's.
    failovers: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    publishes: int = 0


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping the CONNACK properties (the broker's announced limits)."""

    connack: Properties | None = None
    #: The TCP (and TLS) connection was made; a failure after it and before CONNACK is the broker's.
    reached: bool = False

    def _client_connect(self) -> None:
        super()._client_connect()
        self.reached = True

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:  # type: ignore[no-untyped-def]
        self.connack = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)


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
        self.stats = _Stats()
        self._rng = random.Random()
        self._callbacks: list[asyncio.Task[None]] = []
        #: The broker's limits on the current (or last) connection; None before the first connect.
        self.limits: BrokerLimits | None = None
        #: Set when the broker refuses this configuration for good; waits raise it.
        self.error: FedmqError | None = None
        self._gave_up = asyncio.Event()
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
            sock = client._client.socket()  # paho's socket; closing it is what a dead link looks like
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

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
            try:
                await asyncio.wait_for(self._connected.wait(), remaining)
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

    def _make_client(self, host: str, port: int, protocol: str) -> _Client:
        cfg = self.config
        v5 = protocol == "5"
        connect_props = None
        session: dict[str, object] = {"clean_session": False}
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = cfg.session_expiry_s
            session = {"clean_start": False}
        will = None
        if self._presence is not None:
            will_props = None
            if v5:
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
        return _Client(
            host,
            port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            properties=connect_props,
            keepalive=cfg.keepalive_s,
            timeout=cfg.connect_timeout_s,
            will=will,
            tls_params=tls_params,
            max_queued_incoming_messages=cfg.max_queued_incoming,
            logger=self._refusals.logger,
            **session,  # type: ignore[arg-type]
        )

    def _limits(self, client: _Client, endpoint: str, protocol: str) -> BrokerLimits:
        """The broker's announced limits (v5 CONNACK), capped by the configured packet size."""
        props = client.connack
        announced = getattr(props, "MaximumPacketSize", None) if props is not None else None
        sizes = [s for s in (announced, self.config.max_packet_size) if s]
        return BrokerLimits(
            protocol=protocol,
            endpoint=endpoint,
            max_packet_size=min(sizes) if sizes else None,
            retain_available=bool(getattr(props, "RetainAvailable", 1)) if props is not None else True,
            max_qos=int(getattr(props, "MaximumQoS", 2)) if props is not None else 2,
        )

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
            attempt = self._make_client(*endpoint, protocol)
            try:
                async with attempt as client:
                    answered = True
                    self._client = client
                    self._lost = asyncio.Event()
                    self._protocols[endpoint] = protocol
                    self.limits = self._limits(client, where, protocol)
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

    def _refused_version(
        self, exc: Exception, endpoint: tuple[str, int], protocol: str, where: str
    ) -> bool:
        """Handle a CONNACK refusing the protocol version: switch to 3.1.1 (auto) or give up (forced)."""
        if not isinstance(exc, MqttConnectError):
            return False
        code = getattr(exc.rc, "value", exc.rc)
        if code not in _REFUSED_VERSION or protocol != "5":
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

    ``limit`` is lowered to the broker's maximum packet size when that is smaller. Chunks go first so
    that a subscriber that sees the manifest finds its chunks already retained.
    """
    frames = split(payload, conn.frame_limit(topic, limit))
    for frame in frames[1:] + frames[:1]:
        target = topic if frame.chunk is None else chunk_topic(frame.chunk)
        await conn.publish(target, frame.payload, retain=retain, expiry_s=expiry_s)
    return len(frames)
