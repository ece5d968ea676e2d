"""Broker URLs: endpoint lists for clusters, protocol and packet-size options, typed errors."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.mqtt import MqttConfig


def test_url_with_failover_endpoints_and_options():
    cfg = MqttConfig.from_url(
        "mqtt://u:p@10.0.0.1:1884,10.0.0.2:1885,mqtt://10.0.0.3?protocol=3.1.1&max_packet_size=131072",
        "dev-1",
    )
    default_port = MqttConfig().port  # an endpoint without a port gets the plain-MQTT default
    assert cfg.endpoints == [("10.0.0.1", 1884), ("10.0.0.2", 1885), ("10.0.0.3", default_port)]
    assert (cfg.username, cfg.password) == ("u", "p")
    assert (cfg.protocol, cfg.max_packet_size) == ("3.1.1", 131072)


def test_plain_url_negotiates_and_has_one_endpoint():
    cfg = MqttConfig.from_url("mqtts://broker.example:8883", "agg")
    assert cfg.tls and cfg.protocol == "auto" and cfg.endpoints == [("broker.example", 8883)]
    assert cfg.max_packet_size is None


@pytest.mark.parametrize(
    "url, field",
    [
        ("mqtt://h:1?protocol=4", "protocol"),
        ("mqtt://h:1?max_packet_size=big", "max_packet_size"),
        ("mqtt://h:1?max_packet_size=100", "max_packet_size"),
        ("mqtt://h:1?qos=2", "broker"),
        ("mqtt://h:1,h2:notaport", "broker"),
        ("mqtt://h:1,h2/path", "broker"),
    ],
)
def test_bad_urls_raise_config_errors_naming_the_field(url, field):
    with pytest.raises(ConfigError) as err:
        MqttConfig.from_url(url, "dev-1")
    assert err.value.field == field


def test_client_id_with_a_dot_is_refused():
    with pytest.raises(ConfigError, match="client_id"):
        MqttConfig(client_id="dev.1")


def test_retained_wildcards_option():
    assert MqttConfig.from_url("mqtt://h:1", "d").retained_wildcards
    assert not MqttConfig.from_url("mqtt://h:1?retained_wildcards=0", "d").retained_wildcards
    with pytest.raises(ConfigError):
        MqttConfig.from_url("mqtt://h:1?retained_wildcards=maybe", "d")
