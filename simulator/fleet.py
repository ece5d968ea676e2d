"""Drive a real aggregator and N real edge clients (each with its own MQTT connection) in one process.

This is the simulator's core: the demo, the tests and the benchmarks all run federations through it,
so they exercise the same round engine and device logic a deployment runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nacl.signing
import numpy as np
import torch

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.optimizer import ServerOptimizerConfig
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.snapshots import make_snapshot
from shared.wire import RoundResult
from simulator.data import Split, dirichlet_partition, load_digits_split
from simulator.models import accuracy, digits_mlp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    clients: int = 20
    rounds: int = 20
    alpha: float = 0.5
    seed: int = 0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=5, lr=0.1, momentum=0.9, batch_size=16)
    )
    window_s: float = 30.0
    min_clients: int | None = None  # default: half the fleet
    target_clients: int | None = None  # default: the whole fleet
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    federation: str = "demo"
    central_epochs: int = 60
    #: Secure aggregation (SecAgg+) with the integer codec; False runs the trusted plain mode.
    secure: bool = True
    codec_bits: int = 16
    clip_norm: float = 5.0
    subsample_rate: float = 1.0
    snapshot_encoding: str = "f16"
    dp: DPConfig = field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError("clients", "must be >= 1")
        if self.rounds < 1:
            raise ConfigError("rounds", "must be >= 1")
        if self.alpha <= 0:
            raise ConfigError("alpha", "must be > 0")

    @property
    def effective_min(self) -> int:
        return self.min_clients or max(1, self.clients // 2)

    @property
    def effective_target(self) -> int:
        return self.target_clients or self.clients


@dataclass(frozen=True)
class RoundReport:
    round: int
    status: str
    version: int
    contributors: int
    accuracy: float
    elapsed_s: float
    epsilon: float | None = None


@dataclass
class FleetReport:
    final_accuracy: float
    central_accuracy: float
    rounds: int
    clients: int
    bytes_up_per_client_round: float
    bytes_down_per_client_round: float
    wall_s: float
    mode: str = "secure"
    epsilon: float | None = None
    delta: float | None = None
    per_round: list[RoundReport] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["per_round"] = [asdict(r) for r in self.per_round]
        return out


def central_baseline(split: Split, config: FleetConfig) -> float:
    """The same model trained centrally on the union of all devices' data, evaluated on the test set."""
    module = digits_mlp(seed=config.seed)
    model = FederatedModel(module)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    train = TrainConfig(
        epochs=config.central_epochs,
        lr=config.train.lr,
        momentum=config.train.momentum,
        batch_size=config.train.batch_size,
        seed=config.seed,
    )
    LocalTrainer(model, x, y, train).train(model.get_flat())  # leaves the trained weights in the module
    return accuracy(module, torch.from_numpy(split.x_test), torch.from_numpy(split.y_test))


class Evaluator:
    """Scores global weights on the held-out test set (the simulator's view; devices never see it)."""

    def __init__(self, split: Split, seed: int) -> None:
        self.module = digits_mlp(seed=seed)
        self.model = FederatedModel(self.module)
        self.x = torch.from_numpy(split.x_test)
        self.y = torch.from_numpy(split.y_test)

    def __call__(self, weights: np.ndarray) -> float:
        self.model.set_flat(weights)
        return accuracy(self.module, self.x, self.y)


async def run_fleet(
    config: FleetConfig,
    broker_url: str,
    store_dir: Path,
    on_round: Callable[[RoundReport], None] | None = None,
) -> FleetReport:
    """Run ``config.rounds`` rounds of federated training of the digits MLP and report."""
    start = time.perf_counter()
    split = load_digits_split(seed=config.seed)
    shards = dirichlet_partition(split.y_train, config.clients, config.alpha, seed=config.seed)
    evaluator = Evaluator(split, config.seed)
    initial = make_snapshot(config.federation, 0, -1, evaluator.model.layout, evaluator.model.get_flat())
    reports: list[RoundReport] = []

    def observe(result: RoundResult, weights: np.ndarray) -> None:
        report = RoundReport(
            result.round_id,
            result.status,
            result.version,
            result.contributors,
            evaluator(weights),
            time.perf_counter() - start,
            result.metrics.get("epsilon"),
        )
        reports.append(report)
        if on_round is not None:
            on_round(report)

    ids = [f"dev-{i:03d}" for i in range(config.clients)]
    identities = {cid: nacl.signing.SigningKey.generate() for cid in ids} if config.secure else {}
    directory = {cid: bytes(key.verify_key) for cid, key in identities.items()}
    agg_config = AggregatorConfig(
        federation=config.federation,
        mqtt=MqttConfig.from_url(broker_url, client_id="aggregator"),
        store_dir=store_dir,
        mode="secure" if config.secure else "plain",
        directory=directory or None,
        codec=CodecConfig(
            bits=config.codec_bits,
            clip_norm=config.clip_norm,
            expected_clients=1,
            seed=bytes(32),
            subsample_rate=config.subsample_rate,
        ),
        windows=PhaseWindows(masked=config.window_s),
        round_window_s=config.window_s,
        min_clients=config.effective_min,
        target_clients=config.effective_target,
        optimizer=config.optimizer,
        enrolled=frozenset(ids),
        chunk_limit=config.chunk_limit,
        weight_cap=max(len(s) for s in shards),
        snapshot_encoding=config.snapshot_encoding,
        dp=config.dp,
    )
    async with Aggregator(agg_config, initial=initial, observers=[observe]) as aggregator:
        devices = []
        for i, shard in enumerate(shards):
            model = FederatedModel(digits_mlp(seed=config.seed))
            trainer = LocalTrainer(
                model,
                torch.from_numpy(split.x_train[shard]),
                torch.from_numpy(split.y_train[shard]),
                TrainConfig(**{**asdict(config.train), "seed": config.seed * 1000 + i}),
            )
            edge = EdgeConfig(
                federation=config.federation,
                mqtt=MqttConfig.from_url(broker_url, client_id=ids[i]),
                aggregator_key=aggregator.verify_key,
                chunk_limit=config.chunk_limit,
                identity=identities.get(ids[i]),
                directory=directory or None,
            )
            devices.append(EdgeClient(edge, trainer))
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for device in devices:
                await stack.enter_async_context(device)
            tasks = [asyncio.create_task(device.run(stop)) for device in devices]
            try:
                await aggregator.run(config.rounds)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        rounds = max(1, len(reports))
        up = sum(d.conn.stats.bytes_out for d in devices) / (config.clients * rounds)
        down = sum(d.conn.stats.bytes_in for d in devices) / (config.clients * rounds)
    final = reports[-1].accuracy if reports else float("nan")
    return FleetReport(
        final_accuracy=final,
        central_accuracy=central_baseline(split, config),
        rounds=len(reports),
        clients=config.clients,
        bytes_up_per_client_round=up,
        bytes_down_per_client_round=down,
        wall_s=time.perf_counter() - start,
        mode=(
            f"secure, {config.codec_bits}-bit, subsample {config.subsample_rate:g}"
            if config.secure
            else "plain"
        )
        + f", snapshots {config.snapshot_encoding}"
        + (f", DP {config.dp.mode}" if config.dp.enabled else ""),
        epsilon=next((r.epsilon for r in reversed(reports) if r.epsilon is not None), None),
        delta=config.dp.delta if config.dp.enabled else None,
        per_round=reports,
    )
