"""Which broker connection failures are permanent, and what to tell the operator about them.

Why: the connection loop retried every failure forever, so a wrong password (``Not authorized``) or a
wrong CA file (``CERTIFICATE_VERIFY_FAILED``) looked like a broker that is merely down, for hours. These
are not transient: :func:`permanent_cause` maps them to a typed error with a one-line cause, and
:class:`~shared.mqtt.MqttConnection` gives up after ``MqttConfig.fatal_retries`` of them in a row (a
short bounded retry, in case a broker was being reconfigured at that moment).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from shared.errors import BrokerAuthError, BrokerTlsError, FedmqError

log = logging.getLogger("shared.mqtt")

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


class _TlsAlertListener(logging.Handler):
    """Keeps the last TLS alert the MQTT library logged for one connection."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.alert: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "SSL" in message and "ALERT" in message.upper():
            self.alert = message

    def take(self) -> str | None:
        alert, self.alert = self.alert, None
        return alert


class Refusals:
    """Counts one connection's permanent refusals in a row; :meth:`give_up` returns the cause once there
    were ``config.fatal_retries`` of them (0: never).

    paho reports a TLS alert that arrives after the handshake (a client certificate the broker refuses,
    under TLS 1.3) only in its log, and the attempt itself just times out: :attr:`logger` is the logger to
    hand paho, and a handler on it keeps that alert for the next classification.
    """

    def __init__(self, config: Any, logger_name: str) -> None:
        self.config = config
        self.count = 0
        self.logger = logging.getLogger(f"{logger_name}.{config.client_id}")
        self._alerts = _TlsAlertListener()
        self.logger.addHandler(self._alerts)

    def close(self) -> None:
        self.logger.removeHandler(self._alerts)

    def give_up(self, exc: BaseException, where: str) -> FedmqError | None:
        cfg = self.config
        who = f"account {cfg.username!r}" if cfg.username else None
        if who is None and cfg.cert_file:
            who = "a client certificate"
        cause = permanent_cause(exc, where, who, self._alerts.take())
        if cause is None or not cfg.fatal_retries:
            self.count = 0
            return None
        self.count += 1
        if self.count < cfg.fatal_retries:
            log.warning("mqtt %s: %s (attempt %d of %d)", cfg.client_id, cause, self.count, cfg.fatal_retries)
            return None
        log.error("mqtt %s gives up: %s", cfg.client_id, cause)
        return cause
