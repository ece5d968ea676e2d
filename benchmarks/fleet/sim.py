"""Settings, the simulated fleet and server, and real message sizes."""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path

import numpy as np

from aggregator.optimizer import ServerOptimizer, ServerOptimizerConfig
from edge_client.memory import (
    TrainingPlan,
)
from edge_client.participation import HeldDelta, LocalState
from edge_client.trainer import LocalTrainer, TrainResult
from shared.codec import pack, packed_size
from shared.secagg import loopback
from shared.staleness import StalenessPolicy
from shared.wire import Message, ModelUpdate, encode
from simulator.workloads import Workload

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
TASK = "digits"
#: The 1,437 training images give at most ~100 devices 5+ examples each under Dirichlet(0.5); larger
#: fleets reuse these shards (device i holds shard i mod 100), i.e. several devices per data distribution.
MAX_SHARDS = 100
TARGET_ACCURACY = 0.90
#: fedmq's device budget as a fraction of full training's measured peak (249,980 B): the issue's 0.2x.
#: Every block of the CNN still trains on its own at it (block "3": weights, its gradient and one
#: example's activations = 47,068 B, without SGD momentum, which does not fit beside it).
BUDGET_FRACTION = 0.2
HORIZON_S = 4000.0
#: Each run ends at the virtual horizon or after this many device contributions, whichever comes first.
CONTRIBUTION_BUDGET = 10_000
#: "Final accuracy" for the partial-vs-full target is the mean of the last this-many evaluations: single
#: evaluations of a 360-image test set swing by +-0.02 from one buffered round to the next.
FINAL_WINDOW = 10
#: SecAgg+ refuses a roster below three devices (``shared.secagg.params``): the round is abandoned.
MIN_SECURE_ROSTER = 3


# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeModel:
    """Virtual-time costs. A local step of batch 16 on the small CNN: ``step_s`` on a fast device."""

    step_s: float = 1.0
    straggler_slowdown: float = 10.0
    jitter_sigma: float = 0.2
    latency_s: float = 0.1
    up_bytes_per_s: float = 250e3  # 2 Mbit/s uplink
    down_bytes_per_s: float = 1e6


@dataclass(frozen=True)
class Availability:
    """On/off model: this fraction of devices alternates exponential online/offline periods."""

    intermittent_fraction: float = 0.3
    mean_on_s: float = 300.0
    mean_off_s: float = 150.0


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "sync", "fedbuff" or "fedmq"
    clients_per_round: int = 10  # K: the cohort (sync) or the buffer (fedbuff, fedmq)
    deadline_s: float = 60.0  # sync: round deadline; fedmq: masked-phase window
    concurrency: int = 0  # fedbuff: devices training at once
    over_selection: float = 1.0
    staleness: StalenessPolicy = field(default_factory=lambda: StalenessPolicy("none", 0))
    #: Every device's memory budget, as a fraction of the measured peak of full training (whole
    #: model, whole batches; ``edge_client.memory``); None: no budget.
    budget_fraction: float | None = None
    bits: int = 16
    clip_norm: float = 5.0
    subsample_rate: float = 1.0
    secure: bool = False
    min_clients: int = 1
    #: The server step (``aggregator.optimizer``): "fedavg" (lr 1 = plain averaging) or "fedavgm".
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    #: fedmq: a device whose last training took longer than the masked window trains ahead on the
    #: snapshot it has instead of taking a roster slot it cannot fill, and joins a later round
    #: (``EdgeConfig.train_ahead``).
    train_ahead: bool = False
    #: fedmq: scale each block's mean delta by the rotation's dilution (``AggregatorConfig.rotation_step``).
    rotation_step: bool = False

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["staleness"] = self.staleness.to_dict()
        return out


def default_methods(budget_fraction: float = 0.0) -> list[Method]:
    return [
        Method("fedavg", "sync", clients_per_round=10, deadline_s=60.0),
        Method(
            "fedbuff",
            "fedbuff",
            clients_per_round=10,
            concurrency=30,
            staleness=StalenessPolicy("fedbuff", max_staleness=20),
        ),
        Method(
            "fedmq",
            "fedmq",
            clients_per_round=10,
            # fast devices need ~2.1 s (two 1 s steps and the snapshot); 3 s leaves room for the jitter
            deadline_s=3.0,
            over_selection=1.3,
            secure=True,
            staleness=StalenessPolicy("age-variance", max_staleness=20, reference_norm=1.0),
            budget_fraction=budget_fraction or BUDGET_FRACTION,
            # Update norms on this task are 0.1-0.5 (local SGD, lr 0.05, two steps): clip 1 keeps them
            # whole and gives 12 bits the resolution 16 bits had at clip 5.
            bits=12,
            clip_norm=1.0,
            subsample_rate=0.25,
            train_ahead=True,
            rotation_step=True,
            min_clients=2,
        ),
    ]


def override(method: Method, settings: list[str]) -> Method:
    """``method`` with ``FIELD=VALUE`` settings applied (values parsed as the field's type)."""
    kinds = {f.name: f.type for f in fields(Method)}  # annotations are strings (postponed evaluation)
    parsers: dict[str, Callable[[str], object]] = {
        "int": int,
        "float": float,
        "float | None": float,
        "bool": lambda v: v.lower() in ("1", "true", "yes"),
        "str": str,
    }
    changes: dict[str, object] = {}
    for item in settings:
        name, _, value = item.partition("=")
        if name in ("max_staleness", "staleness_function"):  # fields of the method's StalenessPolicy
            policy = changes.get("staleness", method.staleness)
            field_name = "function" if name == "staleness_function" else name
            typed = int(value) if name == "max_staleness" else value
            changes["staleness"] = replace(policy, **{field_name: typed})  # type: ignore[arg-type]
            continue
        if kinds.get(name) not in parsers:
            raise SystemExit(
                f"--fedmq: cannot set {name!r} (settable: max_staleness, staleness_function, "
                f"{', '.join(sorted(k for k in kinds if kinds[k] in parsers))})"
            )
        changes[name] = parsers[str(kinds[name])](value)
    return replace(method, **changes)


def ablation(method: Method) -> Method:
    return replace(method, name="fedmq-full", budget_fraction=None)


# -- the simulated fleet -------------------------------------------------------------------------


class EventQueue:
    """Events ordered by virtual time (ties by insertion order)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, object]] = []
        self._seq = 0

    def push(self, at: float, kind: str, data: object = None) -> None:
        heapq.heappush(self._heap, (at, self._seq, kind, data))
        self._seq += 1

    def pop(self) -> tuple[float, str, object]:
        at, _, kind, data = heapq.heappop(self._heap)
        return at, kind, data

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class Pending:
    """A delta in the making: trained (lazily, see :meth:`SimDevice.delta`) from version ``base``."""

    base: int
    weights: np.ndarray
    blocks: tuple[str, ...] | None
    ready_at: float
    plan: TrainingPlan | None = None
    result: TrainResult | None = None


class SimDevice:
    def __init__(
        self,
        index: int,
        trainer: LocalTrainer,
        slowdown: float,
        toggles: list[float] | None,
        online_at_start: bool,
        rng: random.Random,
    ) -> None:
        self.index = index
        self.trainer = trainer
        self.slowdown = slowdown
        self.toggles = toggles  # times the on/off state flips; None: always online
        self.online_at_start = online_at_start
        self.rng = rng
        self.pending: Pending | None = None
        self.busy_until = 0.0  # fedbuff/fedavg: training in flight
        #: How long its last local training took (what an edge client measures); before the first, the
        #: estimate ``LocalTrainer.estimate_seconds`` gives at start-up: one timed step, times the steps.
        self.last_train_s: float | None = self.nominal_train_seconds(TimeModel())

    def online(self, t: float) -> bool:
        if self.toggles is None:
            return True
        flips = bisect.bisect_right(self.toggles, t)
        return self.online_at_start == (flips % 2 == 0)

    def next_online(self, t: float) -> float:
        if self.online(t):
            return t
        assert self.toggles is not None
        i = bisect.bisect_right(self.toggles, t)
        return self.toggles[i] if i < len(self.toggles) else math.inf

    def nominal_train_seconds(self, time_model: TimeModel) -> float:
        return self.trainer.steps_per_round() * time_model.step_s * self.slowdown

    def train_seconds(self, time_model: TimeModel) -> float:
        jitter = math.exp(self.rng.gauss(0.0, time_model.jitter_sigma))
        self.last_train_s = self.nominal_train_seconds(time_model) * jitter
        return self.last_train_s

    def local_state(self, version: int, t: float) -> LocalState:
        """What the device holds at virtual time ``t`` (it always has the latest snapshot ``version``)."""
        p = self.pending
        held = None if p is None else HeldDelta(p.base, p.blocks, done=p.ready_at <= t)
        return LocalState(version, held, training_busy=False, last_train_s=self.last_train_s)

    def delta(self, pending: Pending) -> TrainResult:
        """Real local training from the pending delta's snapshot, on its blocks, micro-batched as the
        device's memory plan says (``EdgeClient._train_within_budget``)."""
        if pending.result is None:
            plan = pending.plan
            micro, momentum = (None, True) if plan is None else (plan.micro_batch, plan.momentum)
            pending.result = self.trainer.train(pending.weights, pending.blocks, micro, momentum)
        return pending.result


def build_fleet(
    workload: Workload,
    n_devices: int,
    straggler_fraction: float,
    availability: Availability,
    horizon: float,
    seed: int,
) -> list[SimDevice]:
    """``n_devices`` devices on the workload's shards; the straggler and intermittent sets are seeded."""
    rng = random.Random(seed)
    model = workload.federated_model()  # one module shared by every trainer: training is sequential
    order = list(range(n_devices))
    rng.shuffle(order)
    stragglers = set(order[: round(straggler_fraction * n_devices)])
    rng.shuffle(order)
    intermittent = set(order[: round(availability.intermittent_fraction * n_devices)])
    devices = []
    p_on = availability.mean_on_s / (availability.mean_on_s + availability.mean_off_s)
    for i in range(n_devices):
        x, y = workload.device_data[i % len(workload.device_data)]
        trainer = LocalTrainer(
            model, x, y, replace(workload.train_config, seed=seed * 1000 + i), workload.loss_fn
        )
        toggles = None
        online = True
        if i in intermittent:
            online = rng.random() < p_on
            toggles, t, state = [], 0.0, online
            while t < horizon:
                t += rng.expovariate(1.0 / (availability.mean_on_s if state else availability.mean_off_s))
                toggles.append(t)
                state = not state
        slowdown = TimeModel().straggler_slowdown if i in stragglers else 1.0
        devices.append(SimDevice(i, trainer, slowdown, toggles, online, random.Random(seed * 7919 + i)))
    return devices


@dataclass
class Trace:
    method: str
    times: list[float] = field(default_factory=lambda: [0.0])
    accuracies: list[float] = field(default_factory=list)
    contributions: int = 0
    rounds: int = 0
    abandoned: int = 0
    stale: int = 0
    discarded: int = 0
    bytes_up: list[int] = field(default_factory=list)  # per contribution
    staleness: list[int] = field(default_factory=list)
    block_sets: set[tuple[str, ...] | None] = field(default_factory=set)
    roster_sizes: set[int] = field(default_factory=set)  # fedmq: sizes of the SecAgg+ rounds it ran

    def record(self, t: float, accuracy: float) -> None:
        self.times.append(t)
        self.accuracies.append(accuracy)

    def time_to(self, target: float) -> float | None:
        return next((t for t, a in zip(self.times, self.accuracies, strict=True) if a >= target), None)


class Server:
    """The aggregator's state: weights, version, the real server optimizer, evaluation."""

    def __init__(self, workload: Workload, optimizer: ServerOptimizerConfig) -> None:
        self.workload = workload
        model = workload.federated_model()
        self.layout_blocks = model.blocks
        self.block_slices = {b.name: b.slice for b in model.blocks}
        self.weights = model.get_flat()
        self.version = 0
        self.optimizer = ServerOptimizer(optimizer, model.dim)
        self.dim = model.dim

    def apply(self, mean_delta: np.ndarray) -> None:
        self.weights = self.optimizer.step(self.weights, mean_delta)
        self.version += 1

    def accuracy(self) -> float:
        return self.workload.evaluate_flat(self.weights)


# -- message sizes (real encodings) ----------------------------------------------------------------


@cache
def float32_update_bytes(dim: int) -> int:
    update = ModelUpdate(0, "dev-000", 0, 14, "f32", dim, bytes(4 * dim), {"loss": 0.0, "train_s": 0.0})
    return len(encode(update))


@cache
def secagg_overhead(n: int) -> dict[str, float]:
    """Mean bytes one device sends in the non-payload phases of a real SecAgg+ round of ``n`` devices
    (the product's in-memory round, :func:`shared.secagg.loopback.share_phase`, then mask and reveal)."""
    bits, length = 16, 8
    sent: dict[str, list[int]] = {"advertise": [], "shares": [], "masked_header": [], "reveal": []}

    def record(phase: str, message: Message) -> None:
        sent[phase].append(len(encode(message)))

    done = loopback.share_phase(n, bits=bits, length=length, federation="fleet", round_id=0, record=record)
    for client in done.clients.values():
        masked = client.mask(np.zeros(length, np.uint32), done.shared, workers=1)
        message = client.masked_input(pack(masked, bits))
        sent["masked_header"].append(len(encode(message)) - len(message.payload))
        done.server.add_masked(message)
    survivors = done.server.close_masked_phase()
    for client in done.clients.values():
        sent["reveal"].append(len(encode(client.on_survivors(survivors))))
    out = {k: float(np.mean(v)) for k, v in sent.items()}
    out["k"] = float(done.roster.degree)
    return out


def fedmq_bytes(n_roster: int, encoded_length: int, bits: int) -> dict[str, float]:
    over = secagg_overhead(n_roster)
    masked = over["masked_header"] + packed_size(encoded_length, bits)
    return {
        "advertise": over["advertise"],
        "shares": over["shares"],
        "masked": masked,
        "reveal": over["reveal"],
        "total": over["advertise"] + over["shares"] + masked + over["reveal"],
        "k": over["k"],
    }
