"""The MQTT topic tree of one federation — the only place topic strings are built or parsed.

::

    fl/<fed>/model                       retained model snapshot (or the manifest of a chunked one)
    fl/<fed>/model/c/<i>                 retained chunk i of a chunked snapshot
    fl/<fed>/delta (+ /c/<i>)            retained update for holders of the previous version
    fl/<fed>/round                       retained round announcement (id, base version, phase, config)
    fl/<fed>/round/roster                retained secure-aggregation roster of the open round
    fl/<fed>/round/notice                retained signed survivor list (U2, then U3) of the open round
    fl/<fed>/result                      retained result of the last closed or abandoned round
    fl/<fed>/enrolment                   retained enrolled set, signed by the enrolment authority
    fl/<fed>/status/<cid>                retained presence ("online"/"offline", the latter as last will)
    fl/<fed>/r/<round>/<kind>/<cid>      round-scoped message of kind <kind> sent by device <cid>
    fl/<fed>/r/<round>/<kind>/<cid>/c/<i>  chunk i of a chunked round-scoped message
    fl/<fed>/inbox/<cid>                 messages addressed to one device (secure-aggregation shares)

Device and federation ids are restricted to ``[A-Za-z0-9_-]`` so they can never smuggle MQTT
wildcards or separators into a topic, and so broker ACL patterns (``%u``) map one-to-one onto them.
``.`` is left out because brokers that map MQTT topics onto their own subjects (NATS, RabbitMQ) use it
as their separator and refuse or rewrite it (``docs/brokers.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.errors import ConfigError, InvalidValue, LateMessage, ProtocolError, WireError

ROOT = "fl"
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
#: A number in a topic: ASCII digits, canonical (no leading zero), at most nine of them. ``str.isdigit``
#: would accept "²" or "٣", which ``int`` then refuses or reads as another number.
_NUMBER = re.compile(r"0|[1-9][0-9]{0,8}", re.ASCII)
#: Bounds of the numbers a topic may carry (round ids, chunk indices).
MAX_ROUND_ID = 999_999_999
MAX_CHUNK_INDEX = 999_999

#: Round-scoped message kinds. Adding a protocol phase means adding its kind here.
UPDATE = "update"
KEYS = "keys"
SHARES = "shares"
MASKED = "masked"
UNMASK = "unmask"
ROUND_KINDS = frozenset({UPDATE, KEYS, SHARES, MASKED, UNMASK})
#: A device's messages of a secure round, in phase order.
SECURE_ORDER = (KEYS, SHARES, MASKED, UNMASK)


def wrong_phase(kind: str, open_phase: str) -> ProtocolError:
    """The error for a secure round's ``kind`` message that arrives while ``open_phase`` is open: one of an
    earlier phase is late (:class:`LateMessage`, a device's re-send), one of a later phase breaks the
    protocol."""
    late = kind in SECURE_ORDER and open_phase in SECURE_ORDER
    late = late and SECURE_ORDER.index(kind) < SECURE_ORDER.index(open_phase)
    return (LateMessage if late else ProtocolError)(f"{kind} message in phase {open_phase}")


def check_id(value: str, field: str) -> str:
    """Validate a federation or device id; raises ConfigError naming ``field``."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigError(field, f"{value!r} must be 1-64 of [A-Za-z0-9_-] (no '.': NATS refuses it)")
    return value


def parse_number(text: str, limit: int, what: str) -> int:
    """``text`` as a number in ``[0, limit]``: canonical ASCII digits only; WireError naming ``what``."""
    if not _NUMBER.fullmatch(text) or int(text) > limit:
        raise WireError(f"{what} {text!r} is not a number in [0, {limit}]")
    return int(text)


def _parse_chunk_suffix(topic: str, base: str, what: str) -> int | None:
    """None for ``base`` itself, i for ``base/c/<i>``; WireError for anything else."""
    if topic == base:
        return None
    prefix = f"{base}/c/"
    if not topic.startswith(prefix):
        raise WireError(f"not a {what} topic: {topic!r}")
    return parse_number(topic[len(prefix) :], MAX_CHUNK_INDEX, f"chunk index of {what} topic")


@dataclass(frozen=True)
class RoundTopic:
    """A parsed round-scoped topic."""

    round_id: int
    kind: str
    sender: str
    chunk: int | None  # None for the message itself, i for chunk i


@dataclass(frozen=True)
class Topics:
    """Topic names of federation ``fed``."""

    fed: str

    def __post_init__(self) -> None:
        check_id(self.fed, "federation")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.fed}"

    @property
    def model(self) -> str:
        return f"{self.prefix}/model"

    def model_chunk(self, index: int) -> str:
        return f"{self.model}/c/{index}"

    @property
    def model_all(self) -> str:
        """Subscription to the snapshot and its chunks."""
        return f"{self.model}/#"

    @property
    def delta(self) -> str:
        """Retained update for holders of the previous version (a delta, or the full snapshot)."""
        return f"{self.prefix}/delta"

    def delta_chunk(self, index: int) -> str:
        return f"{self.delta}/c/{index}"

    @property
    def delta_all(self) -> str:
        return f"{self.delta}/#"

    def parse_delta_chunk(self, topic: str) -> int | None:
        """Chunk index of a delta chunk topic, None for the delta topic itself; WireError otherwise."""
        return _parse_chunk_suffix(topic, self.delta, "delta")

    @property
    def round(self) -> str:
        return f"{self.prefix}/round"

    @property
    def roster(self) -> str:
        return f"{self.round}/roster"

    @property
    def notice(self) -> str:
        return f"{self.round}/notice"

    @property
    def round_all(self) -> str:
        """Subscription to the announcement and the round's roster and notices."""
        return f"{self.round}/#"

    @property
    def result(self) -> str:
        return f"{self.prefix}/result"

    @property
    def enrolment(self) -> str:
        return f"{self.prefix}/enrolment"

    def status(self, cid: str) -> str:
        return f"{self.prefix}/status/{check_id(cid, 'client_id')}"

    @property
    def status_all(self) -> str:
        return f"{self.prefix}/status/+"

    def parse_status(self, topic: str) -> str:
        """The device id of a presence topic; WireError for anything else."""
        prefix = f"{self.prefix}/status/"
        cid = topic[len(prefix) :] if topic.startswith(prefix) else ""
        if not _ID.fullmatch(cid):
            raise WireError(f"not a presence topic of federation {self.fed!r}: {topic!r}")
        return cid

    def inbox(self, cid: str) -> str:
        return f"{self.prefix}/inbox/{check_id(cid, 'client_id')}"

    def round_msg(self, round_id: int, kind: str, cid: str) -> str:
        if kind not in ROUND_KINDS:
            raise InvalidValue(f"unknown round message kind {kind!r}")
        return f"{self.prefix}/r/{int(round_id)}/{kind}/{check_id(cid, 'client_id')}"

    def round_chunk(self, round_id: int, kind: str, cid: str, index: int) -> str:
        return f"{self.round_msg(round_id, kind, cid)}/c/{index}"

    def inbox_chunk(self, cid: str, index: int) -> str:
        return f"{self.inbox(cid)}/c/{index}"

    def parse_inbox(self, cid: str, topic: str) -> int | None:
        """Chunk index of a topic in ``cid``'s inbox (None for the message itself); WireError otherwise."""
        return _parse_chunk_suffix(topic, self.inbox(cid), f"inbox of {cid!r}")

    @property
    def rounds_all(self) -> str:
        """Aggregator subscription to every round-scoped device message."""
        return f"{self.prefix}/r/#"

    @property
    def masked_inputs(self) -> str:
        """Unchunked masked inputs (and manifests of chunked ones): what summing workers share."""
        return f"{self.prefix}/r/+/{MASKED}/+"

    def rounds_but_masked(self) -> list[str]:
        """The aggregator's round subscriptions when summing workers take :attr:`masked_inputs`: every
        other kind, and the chunks of chunked masked inputs (``aggregator/summing.py``)."""
        kinds = [f"{self.prefix}/r/+/{kind}/#" for kind in sorted(ROUND_KINDS - {MASKED})]
        return [*kinds, f"{self.masked_inputs}/c/+"]

    def parse_round(self, topic: str) -> RoundTopic:
        """Parse a round-scoped topic; raises WireError on anything else."""
        parts = topic.split("/")
        base = [ROOT, self.fed, "r"]
        if parts[:3] != base or len(parts) not in (6, 8):
            raise WireError(f"not a round topic of federation {self.fed!r}: {topic!r}")
        _, _, _, round_s, kind, sender, *rest = parts
        if kind not in ROUND_KINDS or not _ID.fullmatch(sender):
            raise WireError(f"malformed round topic {topic!r}")
        round_id = parse_number(round_s, MAX_ROUND_ID, "round id")
        chunk = None
        if rest:
            if rest[0] != "c":
                raise WireError(f"malformed chunk topic {topic!r}")
            chunk = parse_number(rest[1], MAX_CHUNK_INDEX, "chunk index")
        return RoundTopic(round_id, kind, sender, chunk)

    def parse_model_chunk(self, topic: str) -> int | None:
        """Chunk index of a model chunk topic, None for the snapshot topic itself."""
        return _parse_chunk_suffix(topic, self.model, "model")
