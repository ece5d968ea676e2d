"""Drive a real aggregator and N real edge clients (each with its own MQTT connection) in one process.

This is the simulator's core: the demo, the tests and the benchmarks all run federations through it,
so they exercise the same round engine and device logic a deployment runs.
"""

from __future__ import annotations

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
from aggregator.metrics import serve_metrics
from aggregator.optimizer import ServerOptimizerConfig
from edge_client.client import EdgeClient, EdgeConfig
from edge_client.trainer import LocalTrainer, TrainConfig, TrainResult
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError
from shared.mqtt import MqttConfig
from shared.plan import PhaseWindows
from shared.snapshots import make_snapshot
from shared.wire import RoundResult
from simulator.harness import running
from simulator.js_devices import JsDevice, device_config
from simulator.workloads import get_workload

log = logging.getLogger(__name__)

#: Workloads whose model the JS client can train (Sequential Linear/ReLU MLPs).
JS_TASKS = ("digits-mlp", "digits-wide")


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
    #: JavaScript devices (``clients/js``): the last ``js_devices`` of the fleet run the JS client instead
    #: of the Python one, in Node or in headless Chromium (``js_runner``), over the broker's WebSockets
    #: listener (``run_fleet(ws_url=...)``). Secure mode and MLP workloads (the JS trainer's models) only.
    js_devices: int = 0
    js_runner: str = "node"

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ConfigError("clients", "must be >= 1")
        if not 0 <= self.slow_clients <= self.clients:
            raise ConfigError("slow_clients", f"must be in [0, clients={self.clients}]")
        if self.slow_delay_s < 0:
            raise ConfigError("slow_delay_s", "must be >= 0")
        if not 0 <= self.js_devices <= self.clients:
            raise ConfigError("js_devices", f"must be in [0, clients={self.clients}]")
        if self.js_devices and (not self.secure or self.task not in JS_TASKS):
            raise ConfigError("js_devices", f"JS devices need secure mode and one of the tasks {JS_TASKS}")
        if self.js_runner not in ("node", "browser"):
            raise ConfigError("js_runner", f"{self.js_runner!r} is not 'node' or 'browser'")

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
    #: Per kind of device ("python", "js-node", "js-browser"): devices, bytes up/down per device and
    #: round, mean seconds from joining a round to sending the reveal, mean local training seconds.
    device_kinds: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["per_round"] = [asdict(r) for r in self.per_round]
        return out


async def run_fleet(
    config: FleetConfig,
    broker_url: str,
    store_dir: Path,
    on_round: Callable[[RoundReport], None] | None = None,
    ws_url: str | None = None,
    metrics_listen: str | None = None,
) -> FleetReport:
    """Run ``config.rounds`` rounds of federated training of ``config.task`` and report.

    ``ws_url`` is the broker's MQTT-over-WebSockets URL, needed when ``config.js_devices`` > 0;
    ``metrics_listen`` (``host:port``) serves the aggregator's Prometheus metrics while it runs.
    """
    if config.js_devices and not ws_url:
        raise ConfigError("ws_url", "JS devices need the broker's websockets URL")
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
    first_js = config.clients - config.js_devices
    spans: dict[str, list[float]] = {"round_s": [], "train_s": []}
    async with (
        Aggregator(agg_config, initial=initial, observers=[observe]) as aggregator,
        contextlib.AsyncExitStack() as stack,
    ):
        if metrics_listen:
            stack.push_async_callback((await serve_metrics(aggregator, metrics_listen)).close)
        devices = []
        for i, (features, labels) in enumerate(workload.device_data):
            if i >= first_js:
                continue  # a JS device (started below)
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
            device = EdgeClient(edge, trainer)
            device.phase_hook = _phase_timer(device, spans)
            devices.append(device)
        js_devices = []
        for i in range(first_js, config.clients):
            features, labels = workload.device_data[i]
            js_config = device_config(
                ws_url=str(ws_url),
                federation=config.federation,
                device=ids[i],
                identity=identities[ids[i]],
                aggregator_key=aggregator.verify_key,
                directory=directory,
                features=features.numpy(),
                labels=labels.numpy(),
                rounds=config.rounds,
                timeout_s=config.rounds * 4 * config.window_s,
                report=Path(store_dir) / "js-devices" / f"{ids[i]}-report.json",
                train={
                    "epochs": train.epochs,
                    "lr": train.lr,
                    "momentum": train.momentum,
                    "batch_size": train.batch_size,
                    "seed": config.seed * 1000 + i,
                },
            )
            js_devices.append(
                await JsDevice.start(config.js_runner, js_config, Path(store_dir) / "js-devices")
            )
        js_reports = []
        async with running(devices):
            try:
                await aggregator.run(config.rounds)
            finally:
                for js in js_devices:
                    report = await js.finish()
                    if report is None:
                        log.warning("JS device left no report; its log ends:\n%s", js.log_tail())
                    js_reports.append(report or {})
        rounds = max(1, len(reports))
        js_up = sum(r.get("bytes_out", 0) for r in js_reports)
        js_down = sum(r.get("bytes_in", 0) for r in js_reports)
        up = (sum(d.conn.stats.bytes_out for d in devices) + js_up) / (config.clients * rounds)
        down = (sum(d.conn.stats.bytes_in for d in devices) + js_down) / (config.clients * rounds)
        kinds = {}
        if devices:
            kinds["python"] = _kind_stats(
                len(devices),
                sum(d.conn.stats.bytes_out for d in devices),
                sum(d.conn.stats.bytes_in for d in devices),
                rounds,
                spans["round_s"],
                spans["train_s"],
            )
        if js_reports:
            js_rounds = [r for report in js_reports for r in report.get("rounds", [])]
            kinds[f"js-{config.js_runner}"] = _kind_stats(
                len(js_reports),
                js_up,
                js_down,
                rounds,
                [r["seconds"] for r in js_rounds if r.get("seconds") is not None],
                [r["train_s"] for r in js_rounds if r.get("train_s") is not None],
            )
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
        device_kinds=kinds,
    )


def _phase_timer(device: EdgeClient, spans: dict[str, list[float]]) -> Callable[[str], None]:
    """A phase hook recording, per round, the seconds from advert to reveal and the training time."""
    started: dict[int, float] = {}

    def hook(phase: str) -> None:
        secure = device.secure_round
        if secure is None:
            return
        if phase == "keys":
            started[secure.round_id] = time.perf_counter()
        elif phase == "masked" and device.last_train_s is not None:
            spans["train_s"].append(device.last_train_s)
        elif phase == "unmask" and secure.round_id in started:
            spans["round_s"].append(time.perf_counter() - started.pop(secure.round_id))

    return hook


def _kind_stats(
    count: int, up: int, down: int, rounds: int, round_s: list[float], train_s: list[float]
) -> dict[str, float]:
    return {
        "devices": count,
        "bytes_up_per_device_round": up / (count * rounds),
        "bytes_down_per_device_round": down / (count * rounds),
        "round_s_mean": float(np.mean(round_s)) if round_s else float("nan"),
        "train_s_mean": float(np.mean(train_s)) if train_s else float("nan"),
        "contributions": len(round_s),
    }
