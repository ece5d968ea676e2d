"""A device's configuration and counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.signing

from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.supervision import FaultCounter
from shared.topics import check_id


@dataclass(frozen=True)
class EdgeConfig:
    federation: str
    mqtt: MqttConfig
    #: The aggregator's Ed25519 public key; when set, unsigned or forged snapshots/rounds are refused.
    aggregator_key: bytes | None = None
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    max_snapshot_bytes: int = 64 * 1024 * 1024
    #: Secure aggregation: this device's enrolled Ed25519 identity and the enrolled devices' public keys.
    identity: nacl.signing.SigningKey | None = None
    directory: Mapping[str, bytes] | None = None
    #: Bytes this device can spend on local training (weights, gradients, optimizer state and saved
    #: activations; see ``edge_client/memory.py``). It announces the budget with its per-block activation
    #: costs, the aggregator sizes each round's blocks to it, and the device micro-batches so the step
    #: fits. None: undeclared (train whatever the round asks, whole batches).
    memory_budget: int | None = None
    #: Once up to date, follow ``fl/<fed>/delta`` only and fetch the full snapshot just when behind.
    use_deltas: bool = True
    #: Secure rounds: when this device's last local training took longer than a round's masked window,
    #: it trains on the round's snapshot *without* joining (a roster slot it could not fill would keep
    #: a device that can out of the round) and contributes the delta, stale, to a later round.
    train_ahead: bool = True

    def __post_init__(self) -> None:
        check_id(self.federation, "federation")
        if self.aggregator_key is not None and len(self.aggregator_key) != 32:
            raise ConfigError("aggregator_key", "must be a 32-byte Ed25519 public key")
        if self.chunk_limit < 1024:
            raise ConfigError("chunk_limit", "must be >= 1024 bytes")
        if (self.identity is None) != (self.directory is None):
            raise ConfigError("identity", "secure aggregation needs both identity and directory")
        if self.identity is not None and self.aggregator_key is None:
            raise ConfigError("aggregator_key", "secure aggregation needs the aggregator's public key")

    @property
    def secure(self) -> bool:
        return self.identity is not None

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id


@dataclass
class EdgeStats:
    snapshots: int = 0
    deltas: int = 0  # snapshots reached by applying a delta
    rounds_joined: int = 0
    #: Messages and steps this device refused or that failed, by rule (bounded).
    faults: FaultCounter = field(default_factory=FaultCounter)
    #: Local trainings that raised (each is discarded; the device trains again in a later round).
    failed_trainings: int = 0
    #: Staleness of every delta this device contributed (secure rounds).
    staleness: list[int] = field(default_factory=list)
