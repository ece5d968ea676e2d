"""What the service CLIs (``fedmq-aggregator``, ``fedmq-edge``) share: broker settings, logging, exit codes.

Why one module: an operator reads the same ``[broker]`` table, the same environment variables and the
same exit codes from every component, and a supervisor (systemd, docker) can tell a fault that a restart
cures (exit 1, 2) from one that needs a person (the codes below: wrong password, wrong CA, another
federation, another model) and stop restarting (``RestartPreventExitStatus=``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from shared.errors import (
    BrokerAuthError,
    BrokerTlsError,
    BrokerUnreachable,
    ConfigError,
    FedmqError,
    IncompatibleError,
)
from shared.mqtt import MqttConfig
from shared.settings import Option, read_secret

#: Exit codes. 0: done; 1: a bug (traceback logged); 2: any other fedmq error.
EXIT_OK = 0
EXIT_BUG = 1
EXIT_ERROR = 2
EXIT_CONFIG = 3
EXIT_AUTH = 4
EXIT_TLS = 5
EXIT_PROTOCOL = 6
EXIT_UNREACHABLE = 7
EXIT_INCOMPATIBLE = 8
EXIT_REVOKED = 9


def exit_code(exc: BaseException) -> int:
    """The process exit code for an error that ends a service."""
    from shared.mqtt import BrokerRefused  # the broker-compatibility error lives with the connection code

    table: list[tuple[Any, int]] = [
        (ConfigError, EXIT_CONFIG),
        (BrokerAuthError, EXIT_AUTH),
        (BrokerTlsError, EXIT_TLS),
        (BrokerRefused, EXIT_PROTOCOL),
        (BrokerUnreachable, EXIT_UNREACHABLE),
        (IncompatibleError, EXIT_INCOMPATIBLE),
    ]
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    if type(exc).__name__ == "DeviceRevoked":
        return EXIT_REVOKED
    return EXIT_ERROR if isinstance(exc, FedmqError) else EXIT_BUG


def broker_options(default_client_id: str | None) -> list[Option]:
    """The ``[broker]`` table: where the broker is and how to authenticate (TLS, mTLS, password)."""
    return [
        Option("broker.url", default="mqtt://127.0.0.1:1883", flag="--broker",
               help="mqtt[s]://host:port (credentials in the URL are accepted but visible in ps; prefer "
                    "broker.username + $FEDMQ_BROKER_PASSWORD)"),
        Option("broker.client_id", default=default_client_id, flag="--client-id",
               help="MQTT client id (a device's id)"),
        Option("broker.username", help="broker account (default: none, or the URL's)"),
        Option("broker.password", secret=True, help="broker password (file or $FEDMQ_BROKER_PASSWORD only)"),
        Option("broker.password_file", type="path", help="file whose first line is the broker password"),
        Option("broker.ca_file", type="path", flag="--ca-file",
            help="CA bundle that signed the broker's cert"),
        Option("broker.cert_file", type="path", flag="--cert-file", help="client certificate (mTLS)"),
        Option("broker.key_file", type="path", flag="--key-file", help="client certificate's key (mTLS)"),
        Option("broker.startup_timeout", type="float", default=25.0,
               help="seconds to reach the broker at start before giving up with exit 7 (0: wait forever)"),
        Option("broker.auth_retries", type="int", default=3,
               help="refusals of our credentials or certificate in a row before exiting (4 or 5)"),
    ]  # fmt: skip


def mqtt_config(values: Mapping[str, Any], client_id: str, **extra: Any) -> MqttConfig:
    """An :class:`MqttConfig` from the ``[broker]`` settings; TLS turns on with ``mqtts://`` or any cert."""
    overrides: dict[str, Any] = {"fatal_retries": values.get("broker.auth_retries", 3), **extra}
    username = values.get("broker.username")
    password = read_secret(values, "broker.password")
    if username is not None:
        overrides["username"] = username
        overrides["password"] = password if password is not None else ""
    elif password is not None:
        raise ConfigError("broker.username", "a broker password was given without a username")
    tls_files = {k: values.get(f"broker.{k}") for k in ("ca_file", "cert_file", "key_file")}
    for name, path in tls_files.items():
        if path is not None:
            if not path.exists():
                raise ConfigError(f"broker.{name}", f"{path} does not exist")
            overrides[name] = str(path)
    url = str(values["broker.url"])
    if any(tls_files.values()) and url.startswith(("mqtt://", "tcp://")):
        raise ConfigError("broker.url", "certificate files given: use an mqtts:// URL")
    return MqttConfig.from_url(url, client_id=client_id, **overrides)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(level: str, json_logs: bool = False) -> None:
    """Root logging to stderr, as text or JSON lines (``log.json = true`` / ``--json-logs``)."""
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._fedmq = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others (a test's capture) stay
        if getattr(old, "_fedmq", False):
            root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(str(level).upper())
    except ValueError as exc:
        raise ConfigError("log.level", f"{level!r} is not a logging level") from exc


LOG_OPTIONS = [
    Option("log.level", default="INFO", flag="--log-level", help="DEBUG, INFO, WARNING or ERROR"),
    Option("log.json", type="bool", default=False, flag="--json-logs", help="one JSON object per log line"),
]


def report_fatal(log: logging.Logger, exc: BaseException) -> int:
    """Log the one-line cause of a fatal error (with a traceback only for bugs); returns the exit code."""
    code = exit_code(exc)
    if code == EXIT_BUG:
        log.error("unexpected error", exc_info=exc)
        log.critical("fatal: %s: %s", type(exc).__name__, exc)
    else:
        log.error("fatal (exit %d): %s", code, exc)
    return code
