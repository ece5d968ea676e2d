"""Which broker connection failures are permanent, and what to tell the operator about them.

Why: the connection loop retried every failure forever, so a wrong password (``Not authorized``) or a
wrong CA file (``CERTIFICATE_VERIFY_FAILED``) looked like a broker that is merely down, for hours. These
are not transient: :func:`permanent_cause` maps them to a typed error with a one-line cause, and
:class:`~shared.mqtt.MqttConnection` gives up after ``MqttConfig.fatal_retries`` of them in a row (a
short bounded retry, in case a broker was being reconfigured at that moment).
"""

from __future__ import annotations

import ssl

from shared.errors import BrokerAuthError, BrokerTlsError, FedmqError

#: CONNACK codes that refuse the credentials: MQTT 3.1.1 return codes 4 (bad user name or password) and
#: 5 (not authorised); MQTT 5 reason codes 0x86, 0x87, 0x8A (banned) and 0x8C (bad authentication method).
AUTH_CODES = frozenset({4, 5, 0x86, 0x87, 0x8A, 0x8C})


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc)


def permanent_cause(
    exc: BaseException, where: str, who: str | None, tls_alert: str | None = None
) -> FedmqError | None:
    """A typed error if ``exc`` (from a connection attempt to ``where``) cannot be cured by retrying.

    ``tls_alert`` is a TLS alert the MQTT library logged during that attempt (TLS 1.3 delivers a refused
    client certificate after the handshake, so the attempt itself only times out).
    """
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if type(exc).__name__ == "MqttConnectError" and code in AUTH_CODES:
        return BrokerAuthError(
            f"broker {where} refused {who or 'an anonymous client'}: {rc} (check the user name, the "
            "password or client certificate, and that the broker's passwd file has been reloaded)"
        )
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return BrokerTlsError(
                f"TLS with broker {where} failed: {_reason(link)} (check ca_file and "
                "that the broker's certificate names this host)"
            )
        if isinstance(link, ssl.SSLError):
            return BrokerTlsError(f"TLS with broker {where} failed: {_reason(link)} (check the "
                                  "certificates, and mqtts:// against a TLS listener)")  # fmt: skip
    if tls_alert is not None:
        alert = tls_alert.rsplit(": ", 1)[-1]
        return BrokerTlsError(f"TLS with broker {where} failed: the broker sent {alert} (check the client "
                              "certificate and the CA that signed it)")  # fmt: skip
    return None
