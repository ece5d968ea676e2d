"""How to reach an MQTT broker, and what it accepts: :class:`MqttConfig` (with broker URL parsing),
:class:`BrokerLimits`, :class:`Presence`, and the connection's errors. See :mod:`shared.mqtt`."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from shared.errors import ConfigError, FedmqError
from shared.topics import check_id


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
REFUSED_VERSION = (0x84, 1)
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
    #: MQTT 5 shared subscriptions (``$share/<group>/...``), unless the CONNACK says otherwise; never
    #: assumed under 3.1.1 (NATS refuses them), which is what summing workers need.
    shared_subscriptions: bool = False


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
class ConnectionStats:
    """Counters of one logical connection (all its TCP connections), for metrics and tests."""

    connects: int = 0
    #: Connects to an endpoint other than the previous connection's.
    failovers: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    publishes: int = 0
