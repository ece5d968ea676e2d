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

from shared.mqtt.config import (
    PROTOCOLS,
    BrokerLimits,
    BrokerRefused,
    MqttConfig,
    MqttTimeout,
    PacketTooLarge,
    Presence,
    parse_endpoint,
)
from shared.mqtt.connection import MqttConnection
from shared.mqtt.framing import publish_framed

__all__ = [
    "PROTOCOLS",
    "BrokerLimits",
    "BrokerRefused",
    "MqttConfig",
    "MqttConnection",
    "MqttTimeout",
    "PacketTooLarge",
    "Presence",
    "parse_endpoint",
    "publish_framed",
]
