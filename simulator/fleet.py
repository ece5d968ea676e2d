"""Drive a real aggregator and N real edge clients (each with its own MQTT connection) in one process.

This is the simulator's core: the demo, the tests and the benchmarks all run federations through it,
so they exercise the same round engine and device logic a deployment runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nacl.signing
import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.optimizer import ServerOptimizerConfig
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient, EdgeConfig
from edge_client.trainer import LocalTrainer, TrainConfig, TrainResult
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.snapshots import make_snapshot
from shared.wire import RoundResult
from simulator.workloads import get_workload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    clients: int = 20
    rounds: int = 20
    seed: int = 0
    #: Workload from :mod:`simulator.workloads`; the demo's default is the digits MLP.
    task: str = "digits-mlp"
    #: Local training; None takes the workload's tuned settings.
    train: TrainConfig | None = None
    window_s: float = 30.0
    #: Secure rounds: how long the keys phase waits for the over-selection count of adverts. Devices
    #: that train ahead do not advertise, so a small fleet whose admission count exceeds the devices
    #: that will advertise waits this long every round.
    keys_window_s: float = 5.0
    min_clients: int | None = None  # default: half the fleet
    target_clients: int | None = None  # default: the whole fleet
    optimizer: ServerOptimizerConfig = field(default_factory=ServerOptimizerConfig)
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    federation: str = "demo"
    central_epochs: int | None = None  # None: the workload's default
    #: Secure aggregation (SecAgg+) with the integer codec; False runs the trusted plain mode.
    secure: bool = True
    codec_bits: int = 16
    clip_norm: float = 5.0
    subsample_rate: float = 1.0
    snapshot_encoding: str = "f16"
    dp: DPConfig = field(default_factory=DPConfig)
    #: Stragglers: this many devices (spread evenly over the fleet: every ``clients // slow_clients``-th)
    #: sleep ``slow_delay_s`` after each local training, as a slower device would. 0: none (the default).
    slow_clients: int = 0
    slow_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError("clients", "must be >= 1")
        if not 0 <= self.slow_clients <= self.clients:
            raise ConfigError("slow_clients", f"must be in [0, clients={self.clients}]")
        if self.slow_delay_s < 0:
            raise ConfigError("slow_delay_s", "must be >= 0")

    def is_slow(self, index: int) -> bool:
        """Whether device ``index`` is one of the ``slow_clients`` stragglers."""
        if self.slow_clients == 0 or self.slow_delay_s == 0:
            return False
        stride = self.clients // self.slow_clients
        return index % stride == 0 and index // stride < self.slow_clients
        if self.rounds < 1:
            raise ConfigError("rounds", "must be >= 1")

    @property
    def effective_min(self) -> int:
        return self.min_clients or max(1, self.clients // 2)

    @property
    def effective_target(self) -> int:
        return self.target_clients or self.clients


class SlowTrainer(LocalTrainer):
    """A straggler: trains like any device, then sleeps ``delay_s`` (in the training thread)."""

    def __init__(self, *args: object, delay_s: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.delay_s = delay_s

    def train(
        self,
        global_weights: np.ndarray,
        blocks: Sequence[str] | None = None,
        micro_batch: int | None = None,
        momentum: bool = True,
    ) -> TrainResult:
        result = super().train(global_weights, blocks, micro_batch, momentum)
        time.sleep(self.delay_s)
        return dataclasses.replace(result, seconds=result.seconds + self.delay_s)

    def estimate_seconds(self) -> float:
        return super().estimate_seconds() + self.delay_s  # a slower device's timed step says so


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
    task: str = "digits-mlp"
    metric: str = "accuracy"
    epsilon: float | None = None
    delta: float | None = None
    per_round: list[RoundReport] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["per_round"] = [asdict(r) for r in self.per_round]
        return out


async def run_fleet(
    config: FleetConfig,
    broker_url: str,
    store_dir: Path,
    on_round: Callable[[RoundReport], None] | None = None,
) -> FleetReport:
    """Run ``config.rounds`` rounds of federated training of ``config.task`` and report."""
    start = time.perf_counter()
    workload = get_workload(config.task, config.clients, seed=config.seed)
    train = config.train or workload.train_config
    initial_model = workload.federated_model()
    initial = make_snapshot(config.federation, 0, -1, initial_model.layout, initial_model.get_flat())
    reports: list[RoundReport] = []

    def observe(result: RoundResult, weights: np.ndarray) -> None:
        report = RoundReport(
            result.round_id,
            result.status,
            result.version,
            result.contributors,
            workload.evaluate_flat(weights),
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
        windows=PhaseWindows(keys=config.keys_window_s, masked=config.window_s),
        round_window_s=config.window_s,
        min_clients=config.effective_min,
        target_clients=config.effective_target,
        optimizer=config.optimizer,
        enrolled=frozenset(ids),
        chunk_limit=config.chunk_limit,
        weight_cap=max(workload.device_sizes),
        snapshot_encoding=config.snapshot_encoding,
        dp=config.dp,
    )
    async with Aggregator(agg_config, initial=initial, observers=[observe]) as aggregator:
        devices = []
        for i, (features, labels) in enumerate(workload.device_data):
            trainer_args = (
                workload.federated_model(),
                features,
                labels,
                dataclasses.replace(train, seed=config.seed * 1000 + i),
                workload.loss_fn,
            )
            trainer = (
                SlowTrainer(*trainer_args, delay_s=config.slow_delay_s)
                if config.is_slow(i)
                else LocalTrainer(*trainer_args)
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
    central = workload.central_baseline(epochs=config.central_epochs, config=None)
    return FleetReport(
        final_accuracy=final,
        central_accuracy=central,
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
        task=config.task,
        metric=workload.metric,
        epsilon=next((r.epsilon for r in reversed(reports) if r.epsilon is not None), None),
        delta=config.dp.delta if config.dp.enabled else None,
        per_round=reports,
    )
