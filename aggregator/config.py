"""Aggregator configuration; validated on construction, errors name the bad field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aggregator.optimizer import ServerOptimizerConfig
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.plan import DEFAULT_WEIGHT_CAP, PhaseWindows
from shared.quarantine import QuarantinePolicy
from shared.snapshots import TENSOR_ENCODINGS
from shared.staleness import StalenessPolicy
from shared.topics import check_id

MODES = ("secure", "plain")


def default_codec() -> CodecConfig:
    """16-bit integer updates with rotation; ``expected_clients`` and ``seed`` are set per round."""
    return CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32))


@dataclass(frozen=True)
class AggregatorConfig:
    """``mode="secure"`` (the default) runs SecAgg+ rounds and needs ``directory``, the enrolled
    devices' Ed25519 public keys; ``mode="plain"`` is the trusted-aggregator mode (float32 updates)."""

    federation: str
    mqtt: MqttConfig
    store_dir: Path
    mode: str = "secure"
    #: Enrolled devices' Ed25519 verify keys (32 bytes each), by device id. Required in secure mode.
    directory: Mapping[str, bytes] | None = None
    #: Secure mode: uplink codec (bits, clip norm, rotation, subsampling) and per-phase windows.
    codec: CodecConfig = field(default_factory=default_codec)
    windows: PhaseWindows = field(default_factory=PhaseWindows)
    #: Secure mode: dropout rate the neighbour graph must tolerate, and assumed corrupt fraction.
    dropout_rate: float = 0.2
    corrupt_fraction: float = 0.1
    #: A device's weight is min(examples / weight_cap, 1): FedAvg weighting with a bounded contribution.
    weight_cap: int = DEFAULT_WEIGHT_CAP
    #: Downlink: ``f16`` (compact float16 + zstd, the default), ``q16``/``q8`` or raw ``f32``.
    snapshot_encoding: str = "f16"
    #: Also publish, retained on ``fl/<fed>/delta``, a bit-exact delta from the previous snapshot (or the
    #: full snapshot when the delta would not be smaller); up-to-date devices listen there only.
    publish_deltas: bool = True
    #: Differential privacy (off by default); needs secure mode, whose codec clips every update.
    dp: DPConfig = field(default_factory=DPConfig)
    #: Semi-asynchronous rounds: how stale deltas are weighted, and the oldest accepted.
    staleness: StalenessPolicy = field(default_factory=StalenessPolicy)
    #: Secure mode: admit up to this many times ``target_clients`` to the keys phase; the round closes
    #: once ``target_clients`` masked inputs are in (buffered aggregation, as in FedBuff).
    over_selection: float = 1.3
    #: Partial training: size each round's trainable block set to the smallest memory budget the
    #: devices declared (rotating across rounds). Off: every block trains.
    partial_training: bool = False
    #: Partial training: scale each block's averaged delta by how many rounds of the rotation pass per
    #: round that trains it (``aggregator.blocks.rotation_scales``), so every block keeps full training's
    #: pace. Off: a block moves only in its own rounds, by the plain mean.
    rotation_step: bool = True
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
    #: Rounds in a row that may fail unexpectedly (each is abandoned and logged with its traceback)
    #: before the aggregator gives up and :meth:`Aggregator.run` raises with the cause.
    max_round_failures: int = 5
    #: How long a device named for a quarantining rule sits out, escalating on repeats (shared.quarantine).
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    #: Secure mode: misbehaving devices the beyond-clip hunt assumes at most (aggregator.hunt); 0: off.
    hunt_tolerated: int = 1
    #: Secure mode: sum unchunked masked inputs in this many worker processes, each on a shared MQTT
    #: subscription (``aggregator/summing.py``); 0 sums them in the aggregator's own process.
    summing_workers: int = 0

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
        if self.max_round_failures < 1:
            raise ConfigError("max_round_failures", "must be >= 1")
        if not 0 <= self.summing_workers <= 64:
            raise ConfigError("summing_workers", f"must be in [0, 64], got {self.summing_workers}")
        if self.summing_workers and self.mode != "secure":
            raise ConfigError("summing_workers", "summing workers add masked inputs: they need mode='secure'")
        if self.enrolled is not None:
            for device in self.enrolled:
                check_id(device, "enrolled")
        if self.mode not in MODES:
            raise ConfigError("mode", f"{self.mode!r} is not one of {MODES}")
        if self.mode == "secure":
            if self.directory is None or not (self.directory or getattr(self.directory, "live", False)):
                raise ConfigError("directory", "secure mode needs the enrolled devices' public keys")
            for device, key in self.directory.items():
                check_id(device, "directory")
                if len(key) != 32:
                    raise ConfigError("directory", f"key of {device!r} must be 32 bytes")
            self.codec.validate(secure=True)
            if not 0 <= self.dropout_rate < 1:
                raise ConfigError("dropout_rate", "must be in [0, 1)")
            if not 0 <= self.corrupt_fraction < 0.5:
                raise ConfigError("corrupt_fraction", "must be in [0, 0.5)")
        if self.snapshot_encoding not in ("f32", *TENSOR_ENCODINGS):
            raise ConfigError("snapshot_encoding", f"{self.snapshot_encoding!r} is not f32, f16, q16 or q8")
        self.dp.validate()
        if self.dp.enabled:
            if self.mode != "secure":
                raise ConfigError(
                    "dp", "differential privacy needs mode='secure' (it relies on its clipping)"
                )
            if self.dp.clip_norm is not None and self.dp.clip_norm != self.codec.clip_norm:
                raise ConfigError("dp.clip_norm", f"must equal codec.clip_norm ({self.codec.clip_norm})")
        if self.over_selection < 1:
            raise ConfigError("over_selection", "must be >= 1")
        if self.weight_cap < 1:
            raise ConfigError("weight_cap", "must be >= 1")
        if not 0 <= self.hunt_tolerated <= 3:
            raise ConfigError("hunt_tolerated", "must be in [0, 3]")

    def allows(self, device: str) -> bool:
        """Is ``device`` enrolled? (No list at all accepts any id: development only.)"""
        if self.mode == "secure":
            return device in (self.directory or {})
        return self.enrolled is None or device in self.enrolled
