"""The aggregator's durable state: a SQLite journal of accepted frames and atomic snapshot files.

aiomqtt acknowledges QoS 1 messages before the application sees them, so the broker will not
redeliver a message we lose after that point. The aggregator therefore writes every accepted frame to
the journal (``synchronous=FULL``) *before* it counts; after a crash it replays the journal through the
same ingestion path. The journal key (round, sender, kind, part) makes ingestion idempotent.

Snapshots are written to a temporary file, fsynced, renamed over their final name and the directory
fsynced, so a crash leaves either the old or the new file, never half of one. Each file holds the
published snapshot bytes and the server optimiser state, so model and optimiser move together.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from shared.errors import StoreError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id     INTEGER PRIMARY KEY,
    base_version INTEGER NOT NULL,
    opened_at    REAL NOT NULL,
    deadline     REAL NOT NULL,
    status       TEXT NOT NULL,           -- open | closed | abandoned
    contributors INTEGER NOT NULL DEFAULT 0,
    reason       TEXT NOT NULL DEFAULT '',
    closed_at    REAL,
    noise        REAL                     -- DP noise multiplier the released sum carried, if any
);
CREATE TABLE IF NOT EXISTS journal (
    round_id    INTEGER NOT NULL,
    sender      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    part        INTEGER NOT NULL,         -- -1: the message (or manifest) itself, i >= 0: chunk i
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (round_id, sender, kind, part)
);
"""


@dataclass(frozen=True)
class RoundRecord:
    round_id: int
    base_version: int
    opened_at: float
    deadline: float
    status: str
    contributors: int
    reason: str


@dataclass(frozen=True)
class StoredSnapshot:
    version: int
    round_id: int
    snapshot: bytes  # the exact published wire bytes
    optimizer: dict[str, np.ndarray]


class Store:
    """Journal and snapshot files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.snapshot_dir = self.directory / "snapshots"
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.directory / "journal.sqlite3", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._remove_partial_files()

    def close(self) -> None:
        self._db.close()

    # -- journal ---------------------------------------------------------------------------------

    def journal(self, round_id: int, sender: str, kind: str, part: int, topic: str, payload: bytes) -> bool:
        """Durably record a frame; False if (round, sender, kind, part) was already journaled."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO journal VALUES (?, ?, ?, ?, ?, ?, ?)",
            (round_id, sender, kind, part, topic, payload, time.time()),
        )
        return cursor.rowcount == 1

    def frames(self, round_id: int) -> list[tuple[str, bytes]]:
        """Journaled (topic, payload) frames of a round, in arrival order."""
        rows = self._db.execute(
            "SELECT topic, payload FROM journal WHERE round_id = ? ORDER BY received_at, rowid", (round_id,)
        )
        return [(topic, bytes(payload)) for topic, payload in rows]

    def prune_journal(self, before_round: int) -> None:
        self._db.execute("DELETE FROM journal WHERE round_id < ?", (before_round,))

    # -- rounds ----------------------------------------------------------------------------------

    def open_round(self, round_id: int, base_version: int, opened_at: float, deadline: float) -> None:
        self._db.execute(
            "INSERT INTO rounds (round_id, base_version, opened_at, deadline, status) "
            "VALUES (?, ?, ?, ?, 'open')",
            (round_id, base_version, opened_at, deadline),
        )

    def finish_round(
        self, round_id: int, status: str, contributors: int, reason: str = "", noise: float | None = None
    ) -> None:
        if status not in ("closed", "abandoned"):
            raise StoreError(f"unknown round status {status!r}")
        self._db.execute(
            "UPDATE rounds SET status = ?, contributors = ?, reason = ?, closed_at = ?, noise = ? "
            "WHERE round_id = ?",
            (status, contributors, reason, time.time(), noise, round_id),
        )

    def noise_history(self) -> list[float]:
        """Noise multipliers of the closed rounds that released a DP sum, in order (for the accountant)."""
        rows = self._db.execute(
            "SELECT noise FROM rounds WHERE status = 'closed' AND noise IS NOT NULL ORDER BY round_id"
        )
        return [float(noise) for (noise,) in rows]

    def last_round(self) -> RoundRecord | None:
        row = self._db.execute(
            "SELECT round_id, base_version, opened_at, deadline, status, contributors, reason "
            "FROM rounds ORDER BY round_id DESC LIMIT 1"
        ).fetchone()
        return RoundRecord(*row) if row else None

    def rounds(self) -> list[RoundRecord]:
        rows = self._db.execute(
            "SELECT round_id, base_version, opened_at, deadline, status, contributors, reason "
            "FROM rounds ORDER BY round_id"
        )
        return [RoundRecord(*row) for row in rows]

    # -- snapshots -------------------------------------------------------------------------------

    def _path(self, version: int) -> Path:
        return self.snapshot_dir / f"model-v{version:08d}.fedmq"

    def write_snapshot(
        self, version: int, round_id: int, snapshot: bytes, optimizer: dict[str, np.ndarray]
    ) -> Path:
        """Atomically write snapshot ``version``; refuses to overwrite an existing version."""
        path = self._path(version)
        if path.exists():
            raise StoreError(f"snapshot version {version} already exists; versions never repeat")
        body = msgpack.packb(
            {
                "version": version,
                "round_id": round_id,
                "snapshot": snapshot,
                "optimizer": {k: v.astype(np.float32).tobytes() for k, v in optimizer.items()},
            },
            use_bin_type=True,
        )
        tmp = path.with_suffix(".partial")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.snapshot_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def latest_snapshot(self) -> StoredSnapshot | None:
        paths = sorted(self.snapshot_dir.glob("model-v*.fedmq"))
        if not paths:
            return None
        return self.read_snapshot(paths[-1])

    @staticmethod
    def read_snapshot(path: Path) -> StoredSnapshot:
        try:
            body = msgpack.unpackb(Path(path).read_bytes(), raw=False)
            optimizer = {k: np.frombuffer(v, dtype=np.float32).copy() for k, v in body["optimizer"].items()}
            return StoredSnapshot(
                int(body["version"]), int(body["round_id"]), bytes(body["snapshot"]), optimizer
            )
        except Exception as exc:
            raise StoreError(f"snapshot file {path} is unreadable: {exc}") from exc

    def versions(self) -> list[int]:
        return [int(p.stem.split("-v")[1]) for p in sorted(self.snapshot_dir.glob("model-v*.fedmq"))]

    def _remove_partial_files(self) -> None:
        for partial in self.snapshot_dir.glob("*.partial"):
            log.warning("removing partial snapshot file %s left by a crash", partial)
            partial.unlink()
