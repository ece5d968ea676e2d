"""Aggregator configuration; validated on construction, errors name the bad field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aggregator.optimizer import ServerOptimizerConfig
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.topics import check_id


@dataclass(frozen=True)
class AggregatorConfig:
    federation: str
    mqtt: MqttConfig
    store_dir: Path
    #: Length of a round's collection window in seconds (the deadline).
    round_window_s: float = 30.0
    #: A round closes with the devices that answered if at least this many did, else it is abandoned.
    min_clients: int = 2
    #: A round closes early once this many updates are in.
    target_clients: int = 10
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    #: Devices allowed to contribute; None accepts any well-formed id (development only).
    enrolled: frozenset[str] | None = None
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    #: Largest update (after reassembly) accepted from one device.
    max_update_bytes: int = 64 * 1024 * 1024
    #: Pause between rounds, so devices can fetch the new snapshot before the next window starts.
    round_gap_s: float = 0.0
    #: Journal rows of rounds older than this many rounds are pruned.
    keep_journal_rounds: int = 5

    def __post_init__(self) -> None:
        check_id(self.federation, "federation")
        if self.round_window_s <= 0:
            raise ConfigError("round_window_s", "must be > 0")
        if self.min_clients < 1:
            raise ConfigError("min_clients", "must be >= 1")
        if self.target_clients < self.min_clients:
            raise ConfigError("target_clients", f"must be >= min_clients ({self.min_clients})")
        if self.chunk_limit < 1024:
            raise ConfigError("chunk_limit", "must be >= 1024 bytes")
        if self.max_update_bytes < 1:
            raise ConfigError("max_update_bytes", "must be > 0")
        if self.round_gap_s < 0:
            raise ConfigError("round_gap_s", "must be >= 0")
        if self.enrolled is not None:
            for device in self.enrolled:
                check_id(device, "enrolled")
