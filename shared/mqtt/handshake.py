"""One connection attempt: the aiomqtt client it uses (keeping the broker's CONNACK), and what the
broker's answer says (its limits; a refused protocol version). :class:`shared.mqtt.MqttConnection`
calls these on every (re)connect."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.mqtt.config import REFUSED_VERSION, BrokerLimits, MqttConfig, Presence

#: In-flight publishes on one connection above which aiomqtt logs a warning (its default is 10).
PENDING_PUBLISH_WARNING = 10_000


class Client(aiomqtt.Client):
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

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:  # type: ignore[no-untyped-def]
        # aiomqtt ignores a link that dies before CONNACK (reset, closed, a TLS alert), so the attempt
        # would wait out its whole connect timeout for a CONNACK that cannot come: end it now.
        if not self._connected.done():
            self._loop.call_soon_threadsafe(_lost_before_connack, self._connected, reason_code)
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


def _lost_before_connack(connected: asyncio.Future[None], reason_code: object) -> None:
    if not connected.done():  # (a CONNACK, or the attempt's timeout, may have come first)
        connected.set_exception(aiomqtt.MqttError(f"connection lost before CONNACK ({reason_code})"))


def make_client(
    cfg: MqttConfig,
    presence: Presence | None,
    endpoint: tuple[str, int],
    protocol: str,
    logger: logging.Logger,
) -> Client:
    """An aiomqtt client for one connection attempt to ``endpoint`` over MQTT ``protocol``: a persistent
    session (v5: clean start off plus a session expiry; 3.1.1: clean session off), the presence will
    (v5: with its delay), TLS when configured."""
    host, port = endpoint
    v5 = protocol == "5"
    connect_props = None
    session: dict[str, object] = {"clean_session": False}
    if v5:
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = cfg.session_expiry_s
        session = {"clean_start": False}
    will = None
    if presence is not None:
        will_props = None
        if v5:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            will_props.WillDelayInterval = cfg.will_delay_s
        will = aiomqtt.Will(presence.topic, presence.offline, qos=1, retain=True, properties=will_props)
    tls_params = None
    if cfg.tls:
        tls_params = aiomqtt.TLSParameters(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
    client = Client(
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
        logger=logger,
        **session,  # type: ignore[arg-type]
    )
    # aiomqtt warns on every publish beyond 10 in flight; the aggregator fans share batches out to a whole
    # cohort at once by design (each publish still has its own deadline), so warn only far beyond that.
    client.pending_calls_threshold = PENDING_PUBLISH_WARNING
    return client


def read_limits(client: Client, cfg: MqttConfig, endpoint: str, protocol: str) -> BrokerLimits:
    """The broker's announced limits (v5 CONNACK), capped by the configured packet size."""
    props = client.connack
    announced = getattr(props, "MaximumPacketSize", None) if props is not None else None
    sizes = [s for s in (announced, cfg.max_packet_size) if s]
    return BrokerLimits(
        protocol=protocol,
        endpoint=endpoint,
        max_packet_size=min(sizes) if sizes else None,
        retain_available=bool(getattr(props, "RetainAvailable", 1)) if props is not None else True,
        max_qos=int(getattr(props, "MaximumQoS", 2)) if props is not None else 2,
        shared_subscriptions=protocol == "5" and bool(getattr(props, "SharedSubscriptionAvailable", 1)),
    )


def refuses_version(exc: Exception, protocol: str) -> bool:
    """Whether ``exc`` is a CONNACK refusing MQTT 5 (v5 reason 0x84; a 3.1.1 broker's return code 1)."""
    if not isinstance(exc, MqttConnectError) or protocol != "5":
        return False
    return getattr(exc.rc, "value", exc.rc) in REFUSED_VERSION
