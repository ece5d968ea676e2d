"""Every error a fedmq user can hit derives from :class:`FedmqError`.

Each subclass names the layer that raised it so callers can catch narrowly, and every message says what
was wrong and, where it helps, what to do about it.
"""

from __future__ import annotations


class FedmqError(Exception):
    """Base class of all fedmq errors."""


class ConfigError(FedmqError, ValueError):
    """A configuration object failed validation; the message names the bad field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid configuration field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class InvalidValue(FedmqError, ValueError):
    """A value outside its domain (a message field, a Shamir parameter, a topic kind, a chunk limit).

    Also a ``ValueError``, so code that validates with ``except ValueError`` keeps working; the wire
    decoder turns one raised while building a message into a :class:`WireError`.
    """


class NotFound(FedmqError, KeyError):
    """A name that is not there (a block of the layout); also a ``KeyError``."""


class WireError(FedmqError):
    """A payload could not be decoded into a known, well-formed message."""


class ChunkError(WireError):
    """A chunked payload is inconsistent (size, hash or index mismatch)."""


class ProtocolError(FedmqError):
    """A well-formed message that breaks the protocol (wrong round, unknown sender, replay...)."""


class LateMessage(ProtocolError):
    """A message for a round or phase that is already over: what an honest device's re-send after a
    reconnect looks like (its delivery ledger re-sends until the aggregator moves on). Refused and counted,
    but not an offence: it must neither quarantine a device nor show it among the offenders."""


class SecAggError(ProtocolError):
    """Secure aggregation refused to proceed (bad signature, threshold not met, double reveal...)."""


class CodecError(FedmqError):
    """An update could not be encoded or decoded (shape mismatch, bit width out of range...)."""


class StoreError(FedmqError):
    """The aggregator's durable store is missing or inconsistent."""


class BrokerAuthError(FedmqError):
    """The broker refused our credentials or our account may not do this (wrong password, no such user,
    not authorised). Retrying cannot help: fix the account or the password."""


class BrokerTlsError(FedmqError):
    """The TLS handshake with the broker failed (unknown CA, wrong host name, expired or refused client
    certificate). Retrying cannot help: fix the CA file or the certificates."""


class BrokerUnreachable(FedmqError):
    """The broker could not be reached at start within the configured deadline."""


class IncompatibleError(FedmqError):
    """This component cannot take part in the federation it reached: another federation instance, a
    model of another shape, or an aggregator key that signs nothing it receives."""
