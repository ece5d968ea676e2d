"""Per-device participation and traffic, kept beside the aggregator's store for ``fedmq status``.

Why a file of its own: the journal keeps only the last few rounds' frames (it is a crash-recovery log),
and secure rounds never journal who was summed. This ledger is fed by two hooks the CLI installs on a
running :class:`~aggregator.engine.Aggregator`: every incoming message (sender, bytes) and every round
result (who contributed), and it rewrites ``participation.json`` atomically after each round.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import FedmqError
from shared.topics import Topics
from shared.wire import RoundResult

log = logging.getLogger(__name__)

#: Rounds of per-round history kept in the ledger.
KEEP_ROUNDS = 1000


def sender_of(topics: Topics, topic: str) -> str | None:
    """The device a message came from, by its topic (round messages and presence); None otherwise."""
    try:
        if topic.startswith(topics.status_all[:-1]):
            return topics.parse_status(topic)
        return topics.parse_round(topic).sender
    except FedmqError:
        return None


def contributors(aggregator: Any, result: RoundResult) -> list[str]:
    """Who was summed into ``result``'s round (secure: the survivors U3; plain: journaled senders)."""
    secure = getattr(aggregator, "last_secure", None)
    if secure is not None and getattr(secure, "round_id", None) == result.round_id:
        server = getattr(secure, "server", None)
        return sorted(getattr(server, "masked", ()) or ())
    store = getattr(aggregator, "store", None)
    if store is None:
        return []
    topics = Topics(aggregator.config.federation)
    return sorted({s for t, _ in store.frames(result.round_id) if (s := sender_of(topics, t))})


class Ledger:
    """``participation.json``: per device, rounds contributed, last round, bytes and messages in."""

    def __init__(self, path: Path, federation: str) -> None:
        self.path = Path(path)
        self.topics = Topics(federation)
        self.devices: dict[str, dict[str, Any]] = {}
        #: Per round (the last ``KEEP_ROUNDS``): status, contributors, bytes received during the round.
        self.rounds: dict[str, dict[str, Any]] = {}
        self.version: int | None = None
        self._bytes_since = 0
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.devices = dict(data.get("devices", {}))
                self.rounds = dict(data.get("rounds", {}))
            except ValueError:
                log.warning("participation ledger %s unreadable; starting a new one", self.path)

    def _row(self, device: str) -> dict[str, Any]:
        return self.devices.setdefault(
            device, {"rounds": 0, "last_round": None, "bytes_in": 0, "messages_in": 0, "last_seen": None}
        )

    def on_message(self, topic: str, payload: bytes) -> None:
        device = sender_of(self.topics, topic)
        if device is None or not payload:
            return
        row = self._row(device)
        row["bytes_in"] += len(payload)
        self._bytes_since += len(payload)
        row["messages_in"] += 1
        row["last_seen"] = round(time.time(), 3)

    def on_round(self, aggregator: Any, result: RoundResult, weights: np.ndarray) -> None:
        self.version = result.version
        summed = contributors(aggregator, result) if result.status == "closed" else []
        for device in summed:
            row = self._row(device)
            row["rounds"] += 1
            row["last_round"] = result.round_id
        self.rounds[str(result.round_id)] = {
            "status": result.status, "version": result.version, "contributors": sorted(summed),
            "bytes_in": self._bytes_since, "reason": result.reason, "at": round(time.time(), 3),
        }  # fmt: skip
        self._bytes_since = 0
        for old in sorted(self.rounds, key=int)[:-KEEP_ROUNDS]:
            del self.rounds[old]
        self.save()

    def save(self) -> None:
        body = {"updated_at": round(time.time(), 3), "version": self.version, "devices": self.devices,
                "rounds": self.rounds}  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
