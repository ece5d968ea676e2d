"""Exit codes of the service CLIs, and which connection failures count as permanent."""

from __future__ import annotations

import ssl

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from edge_client.enrolment import DeviceRevoked
from shared import service
from shared.connect_errors import permanent_cause
from shared.enrolment import FederationMismatch
from shared.errors import (
    BrokerAuthError,
    BrokerTlsError,
    BrokerUnreachable,
    ConfigError,
    FedmqError,
    IncompatibleError,
)
from shared.mqtt import BrokerRefused


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("rounds.min_clients", "must be >= 1"), service.EXIT_CONFIG),
        (BrokerAuthError("refused"), service.EXIT_AUTH),
        (BrokerTlsError("unknown ca"), service.EXIT_TLS),
        (BrokerRefused("refuses MQTT 5"), service.EXIT_PROTOCOL),
        (BrokerUnreachable("down"), service.EXIT_UNREACHABLE),
        (IncompatibleError("another model"), service.EXIT_INCOMPATIBLE),
        (FederationMismatch("another epoch"), service.EXIT_INCOMPATIBLE),
        (DeviceRevoked("revoked"), service.EXIT_REVOKED),
        (FedmqError("anything else"), service.EXIT_ERROR),
        (RuntimeError("a bug"), service.EXIT_BUG),
    ],
)
def test_each_fatal_error_has_its_exit_code(error, code):
    assert service.exit_code(error) == code


class _Code:
    def __init__(self, value: int) -> None:
        self.value = value

    def __str__(self) -> str:
        return f"code {self.value}"


@pytest.mark.parametrize("value", [4, 5, 0x86, 0x87, 0x8C])
def test_refused_credentials_are_permanent(value):
    cause = permanent_cause(MqttConnectError(_Code(value)), "b:8883", "account 'dev-1'")
    assert isinstance(cause, BrokerAuthError) and "account 'dev-1'" in str(cause)


def test_tls_failures_anywhere_in_the_chain_are_permanent():
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as inner:
            raise aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED]") from inner
    except aiomqtt.MqttError as exc:
        assert isinstance(permanent_cause(exc, "b:8883", None), BrokerTlsError)
    alert = "failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)"
    cause = permanent_cause(aiomqtt.MqttError("Operation timed out"), "b:8883", None, alert)
    assert isinstance(cause, BrokerTlsError) and "unknown ca" in str(cause)


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(111, "Connection refused"), aiomqtt.MqttError("Operation timed out"),
     MqttConnectError(_Code(0x88)), MqttConnectError(_Code(3))],  # server unavailable: transient
)  # fmt: skip
def test_transient_failures_are_retried(exc):
    assert permanent_cause(exc, "b:8883", None) is None
