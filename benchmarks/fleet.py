"""Fleet experiment (issue 5, item 4): semi-asynchronous fedmq against synchronous FedAvg and FedBuff.

One run on ``digits`` (sklearn 8x8 digits, Dirichlet(0.5) label skew, the 6,090-parameter CNN of
:mod:`simulator.workloads.digits`) reports time to a target accuracy, final accuracy, device peak training
memory and bytes per device per round for three methods, at 100 and 500 devices with 0%, 50% and 90%
stragglers (10x slower) and an on/off availability model; then a small run over real MQTT.

What is REAL in the large runs (the components a deployment runs, called directly):

* local training: :class:`edge_client.trainer.LocalTrainer` on each device's shard (torch, SGD);
* partial training: every fedmq device has a memory budget (``--budget-fraction`` of full training's
  measured peak) and announces its activation profile (:func:`edge_client.memory.activation_profile`);
  :func:`aggregator.blocks.choose_blocks` picks each round's blocks, the device plans the step
  (:func:`edge_client.memory.plan_training`: micro-batch, momentum) and trains as
  ``EdgeClient._train_within_budget`` does, sending the announced blocks' slice;
* staleness: :class:`shared.staleness.StalenessPolicy` (weights, max staleness) and the device's rules
  for stale deltas (discarded past the maximum; a stale delta of other blocks waits for a round of its
  blocks; a device still training on an older snapshot skips rounds; a device whose last training took
  longer than the masked window trains ahead without advertising, ``EdgeConfig.train_ahead``);
* the uplink codec: fedmq encodes with :class:`shared.codec.UpdateEncoder` (clip, rotation,
  subsampling, 12-bit stochastic quantization, weight limbs), the aggregator decodes the modular sum with
  :class:`shared.codec.UpdateDecoder`. The SecAgg+ masks cancel in that sum, so the masked sum is
  replaced by the plain modular sum of the encodings (``tests/integration/test_secure.py`` checks they
  are equal bit for bit). FedAvg and FedBuff send float32 (:class:`shared.codec.Float32Codec`);
* the server step: :class:`aggregator.optimizer.ServerOptimizer` (FedAvg, server lr 1), with partial
  training's per-block rotation scales (:func:`aggregator.blocks.rotation_scales`, as the engine applies
  them with ``AggregatorConfig.rotation_step``);
* bytes: real messages encoded by :func:`shared.wire.encode` — ``ModelUpdate`` (float32) for FedAvg
  and FedBuff; for fedmq a real SecAgg+ round (``shared.secagg``, real keys, Shamir shares, sealed boxes)
  at the round's roster size gives ``AdvertiseKeys``, the ``ShareBatch``, ``UnmaskReveal``, and a
  ``MaskedInput`` whose payload is the packed encoding;
* device memory: :func:`edge_client.memory.measure_training_memory` on the real model, batch,
  micro-batch, optimizer and freezing (tensor bytes: weights, gradients, momentum, autograd-saved
  activations).

What is SIMULATED: time (a discrete-event queue over virtual seconds: local training takes
``steps x step_s`` seconds, times 10 for a straggler, with log-normal jitter; messages take a latency plus
bytes over a link rate), availability (intermittent devices alternate exponential on/off periods; they
train while off but can only be selected or upload while on), the MQTT transport (no broker in the large
runs) and admission (the first ``ceil(1.3 K)`` devices to advertise keys are modelled as a random draw
among the online devices able to join; devices that lose the race do not train). Secure-round dropouts
after the masked phase are not modelled.

Methods:

* ``fedavg``: synchronous FedAvg. Each round samples ``K`` online devices, waits for all of them or the
  deadline (long enough for a straggler), averages float32 deltas; nothing stale.
* ``fedbuff``: FedBuff (Nguyen et al., AISTATS 2022): ``concurrency`` devices always training, the
  server applies the buffer when ``K`` updates are in, each weighted ``1/sqrt(1+tau)``; full model,
  float32.
* ``fedmq``: buffered secure rounds: ``ceil(1.3 K)`` admitted, the round closes at ``K`` masked inputs or
  its masked-phase deadline; stale deltas weighted by the age-variance rule (``shared/staleness.py``);
  slow devices train ahead; memory-budgeted rotating partial training with the rotation-scaled server
  step; 12-bit integer codec (clip 1, subsampling 0.25); SecAgg+ bytes counted.
* ``fedmq-full``: fedmq without partial training (the memory/accuracy ablation).

The small real run drives :func:`simulator.fleet.run_fleet` (real Mosquitto, aggregator, one edge client
and MQTT connection per device) with some devices slowed by ``FleetConfig.slow_clients``.

    .venv/bin/python benchmarks/fleet.py --json benchmarks/results/fleet.json
    .venv/bin/python benchmarks/fleet.py --quick --json /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import heapq
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aggregator.blocks import choose_blocks, rotation_scales  # noqa: E402
from aggregator.optimizer import ServerOptimizer, ServerOptimizerConfig  # noqa: E402
from edge_client.memory import (  # noqa: E402
    TrainingMemory,
    TrainingPlan,
    activation_profile,
    measure_training_memory,
    plan_training,
)
from edge_client.model import FederatedModel  # noqa: E402
from edge_client.trainer import LocalTrainer, TrainResult  # noqa: E402
from shared.codec import CodecConfig, Float32Codec, UpdateDecoder, UpdateEncoder, pack, packed_size, unpack  # noqa: E402
from shared.influence import device_weight  # noqa: E402
from shared.secagg import SecAggClient, SecAggServer, generate_identity  # noqa: E402
from shared.staleness import StalenessPolicy  # noqa: E402
from shared.wire import ModelUpdate, encode  # noqa: E402
from shared.wire.secagg import ShareBatch  # noqa: E402
from simulator.workloads import Workload, get_workload  # noqa: E402

log = logging.getLogger(__name__)
RESULTS = ROOT / "benchmarks" / "results"
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
    """Mean bytes one device sends in the non-payload phases of a real SecAgg+ round of ``n`` devices."""
    federation, round_id, bits, length = "fleet", 0, 16, 8
    aggregator = generate_identity()
    identities = {f"dev-{i:03d}": generate_identity() for i in range(n)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    clients = {
        d: SecAggClient(federation, d, k, bytes(aggregator.verify_key), directory)
        for d, k in identities.items()
    }
    server = SecAggServer(
        federation,
        round_id,
        aggregator,
        directory,
        bits,
        length,
        unpack=lambda m: unpack(m.payload, bits, length),
    )
    sent: dict[str, list[int]] = {"advertise": [], "shares": [], "masked_header": [], "reveal": []}
    for client in clients.values():
        advert = client.advertise(round_id)
        sent["advertise"].append(len(encode(advert)))
        server.add_advert(advert)
    roster = server.make_roster()
    for device, client in clients.items():
        bundles = client.on_roster(roster)
        sent["shares"].append(len(encode(ShareBatch.outgoing(federation, round_id, device, bundles))))
        for bundle in bundles:
            server.add_shares(bundle)
    shared = server.close_share_phase()
    for device, client in clients.items():
        for bundle in server.shares_for(device):
            client.on_shares(bundle)
    for client in clients.values():
        masked = client.mask(np.zeros(length, np.uint32), shared, workers=1)
        message = client.masked_input(pack(masked, bits))
        sent["masked_header"].append(len(encode(message)) - len(message.payload))
        server.add_masked(message)
    survivors = server.close_masked_phase()
    for client in clients.values():
        sent["reveal"].append(len(encode(client.on_survivors(survivors))))
    out = {k: float(np.mean(v)) for k, v in sent.items()}
    out["k"] = float(roster.degree)
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


# -- the three methods -------------------------------------------------------------------------------


def example_weight(result: TrainResult, cap: int) -> float:
    return device_weight(result.num_examples, cap)


def float32_mean(deltas: list[tuple[np.ndarray, float]], dim: int) -> np.ndarray:
    """The plain (trusted) aggregate through the real Float32Codec: sum of encodings, then decode."""
    codec = Float32Codec(CodecConfig(32, 1e9, 1, bytes(32), scheme="float32"), dim)
    total = np.zeros(dim + 1, np.float64)
    for delta, weight in deltas:
        total += codec.encode(delta, weight)
    mean, _ = codec.decode(total, len(deltas))
    return mean


def run_sync(
    server: Server,
    devices: list[SimDevice],
    method: Method,
    tm: TimeModel,
    horizon: float,
    cap: int,
    rng: random.Random,
) -> Trace:
    trace = Trace(method.name)
    trace.accuracies.append(server.accuracy())
    up = float32_update_bytes(server.dim)
    snapshot_s = tm.latency_s + 2 * server.dim / tm.down_bytes_per_s  # f16 snapshot
    t = 0.0
    while t < horizon and not capped(trace, CONTRIBUTION_BUDGET):
        online = [d for d in devices if d.online(t)]
        cohort = rng.sample(online, min(method.clients_per_round, len(online)))
        queue = EventQueue()
        deadline = t + method.deadline_s
        queue.push(deadline, "deadline")
        for device in cohort:
            finish = t + snapshot_s + device.train_seconds(tm)
            arrive = device.next_online(finish) + tm.latency_s + up / tm.up_bytes_per_s
            queue.push(arrive, "update", device)
        arrived: list[SimDevice] = []
        close = deadline
        while queue:
            at, kind, data = queue.pop()
            if kind == "deadline":
                break
            arrived.append(data)  # type: ignore[arg-type]
            if len(arrived) == len(cohort):
                close = at
                break
        trace.rounds += 1
        if len(arrived) < method.min_clients:
            trace.abandoned += 1
            t = close
            continue
        deltas = []
        for device in arrived:
            result = device.delta(Pending(server.version, server.weights, None, close))
            deltas.append((result.delta, example_weight(result, cap)))
            trace.bytes_up.append(up)
            trace.staleness.append(0)
        trace.contributions += len(arrived)
        server.apply(float32_mean(deltas, server.dim))
        t = close + tm.latency_s
        trace.record(t, server.accuracy())
    return trace


def run_fedbuff(
    server: Server,
    devices: list[SimDevice],
    method: Method,
    tm: TimeModel,
    horizon: float,
    cap: int,
    rng: random.Random,
) -> Trace:
    trace = Trace(method.name)
    trace.accuracies.append(server.accuracy())
    up = float32_update_bytes(server.dim)
    snapshot_s = tm.latency_s + 2 * server.dim / tm.down_bytes_per_s
    policy = method.staleness
    queue = EventQueue()
    in_flight: set[int] = set()

    def start(t: float) -> None:
        idle = [d for d in devices if d.index not in in_flight and d.online(t)]
        if not idle:
            queue.push(t + 10.0, "retry")
            return
        device = rng.choice(idle)
        in_flight.add(device.index)
        finish = t + snapshot_s + device.train_seconds(tm)
        pending = Pending(server.version, server.weights, None, finish)
        arrive = device.next_online(finish) + tm.latency_s + up / tm.up_bytes_per_s
        queue.push(arrive, "update", (device, pending))

    for _ in range(method.concurrency):
        start(0.0)
    buffer: list[tuple[np.ndarray, float]] = []
    while queue:
        t, kind, data = queue.pop()
        if t >= horizon or capped(trace, CONTRIBUTION_BUDGET):
            break
        if kind == "retry":
            start(t)
            continue
        device, pending = data  # type: ignore[misc]
        in_flight.discard(device.index)
        tau = server.version - pending.base
        if policy.accepts(tau):
            result = device.delta(pending)
            weight = example_weight(result, cap) * policy.weight(tau, float(np.linalg.norm(result.delta)))
            buffer.append((result.delta, weight))
            trace.bytes_up.append(up)
            trace.staleness.append(tau)
            trace.stale += tau > 0
            trace.contributions += 1
        else:
            trace.discarded += 1
        if len(buffer) >= method.clients_per_round:
            server.apply(float32_mean(buffer, server.dim))
            buffer = []
            trace.rounds += 1
            trace.record(t, server.accuracy())
        start(t)
    return trace


class MemoryPlanner:
    """A fleet's memory budget and the device-side plan for it (``edge_client.memory``), measured once.

    The budget is ``fraction`` of the measured peak of full training; the profile is what each device
    announces with it; the plan per block set is what ``plan_training`` gives a device.
    """

    _cache: ClassVar[dict[tuple[str, int, float | None], MemoryPlanner]] = {}

    def __init__(self, workload: Workload, fraction: float | None) -> None:
        self.model = FederatedModel(workload.model_factory())
        self.x = torch.cat([f for f, _ in workload.device_data])
        self.y = torch.cat([labels for _, labels in workload.device_data])
        self.workload = workload
        w = workload
        self.full = measure_training_memory(self.model, self.x, self.y, w.train_config, w.loss_fn)
        self.budget = None if fraction is None else int(fraction * self.full.peak)
        self.profile = (
            None if fraction is None else activation_profile(self.model, self.x, self.y, workload.loss_fn)
        )
        self._plans: dict[tuple[str, ...] | None, TrainingPlan] = {}

    @classmethod
    def of(cls, workload: Workload, fraction: float | None) -> MemoryPlanner:
        key = (workload.name, workload.n_devices, fraction)
        if key not in cls._cache:
            cls._cache[key] = cls(workload, fraction)
        return cls._cache[key]

    def plan(self, blocks: tuple[str, ...] | None) -> TrainingPlan | None:
        """None without a budget: whole batches, the configured optimizer."""
        if self.budget is None:
            return None
        if blocks not in self._plans:
            w = self.workload
            self._plans[blocks] = plan_training(
                self.model, self.x, self.y, w.train_config, w.loss_fn, blocks, self.budget
            )
        return self._plans[blocks]

    def memory(self, blocks: tuple[str, ...] | None) -> TrainingMemory:
        plan = self.plan(blocks)
        return self.full if plan is None else plan.memory


def run_fedmq(
    server: Server,
    devices: list[SimDevice],
    method: Method,
    tm: TimeModel,
    horizon: float,
    cap: int,
    rng: random.Random,
) -> Trace:
    """Secure buffered rounds as ``aggregator/engine.py`` and ``edge_client/client.py`` run them."""
    trace = Trace(method.name)
    trace.accuracies.append(server.accuracy())
    policy = method.staleness
    admit = max(method.clients_per_round, math.ceil(method.over_selection * method.clients_per_round))
    planner = MemoryPlanner.of(server.workload, method.budget_fraction)
    snapshot_s = tm.latency_s + 2 * server.dim / tm.down_bytes_per_s
    t = 0.0
    round_id = 0
    while t < horizon and not capped(trace, CONTRIBUTION_BUDGET):
        blocks_list = choose_blocks(server.layout_blocks, planner.budget, round_id, planner.profile)
        blocks = tuple(blocks_list) if blocks_list is not None else None
        slices = [server.block_slices[b] for b in blocks] if blocks else [slice(0, server.dim)]
        dim = sum(s.stop - s.start for s in slices)
        trace.block_sets.add(blocks)
        # Each online device reads the announcement as ``EdgeClient._join_secure`` does: it discards a
        # delta past the maximum staleness (or a fresh one of other blocks), keeps a stale delta of other
        # blocks for a round of its blocks, skips the round while still training on an older snapshot,
        # and, if it has no delta and its last training took longer than the masked window, trains
        # ahead without advertising. The rest can join: idle, or holding a finished delta.
        eligible = []
        for device in devices:
            if not device.online(t):
                continue
            pending = device.pending
            if pending is not None:
                tau = server.version - pending.base
                if not policy.accepts(tau) or (tau == 0 and pending.blocks != blocks):
                    trace.discarded += 1
                    pending = device.pending = None
            if pending is not None and (
                pending.blocks != blocks or (pending.ready_at > t and pending.base != server.version)
            ):
                continue
            if (
                pending is None
                and method.train_ahead
                and device.last_train_s is not None
                and snapshot_s + device.last_train_s > method.deadline_s
            ):
                finish = t + snapshot_s + device.train_seconds(tm)
                device.pending = Pending(server.version, server.weights, blocks, finish, planner.plan(blocks))
                continue
            eligible.append(device)
        roster = rng.sample(eligible, min(admit, len(eligible)))
        n = len(roster)
        if n < max(method.min_clients, MIN_SECURE_ROSTER if method.secure else 1):
            trace.rounds += 1
            trace.abandoned += 1
            t += 5.0
            round_id += 1
            continue
        trace.roster_sizes.add(n)
        config = CodecConfig(
            method.bits, method.clip_norm, n, rng.randbytes(32), subsample_rate=method.subsample_rate
        )
        encoder = UpdateEncoder(config, dim)
        sizes = fedmq_bytes(n, encoder.encoded_length, method.bits)
        # keys -> roster -> shares -> inbox: two round trips plus the share upload, before masking.
        masked_open = t + 4 * tm.latency_s + (sizes["advertise"] + sizes["shares"]) / tm.up_bytes_per_s
        deadline = masked_open + method.deadline_s
        upload_s = tm.latency_s + sizes["masked"] / tm.up_bytes_per_s
        queue = EventQueue()
        queue.push(deadline, "deadline")
        for device in roster:
            pending = device.pending  # None, or a delta of these blocks within the maximum staleness
            if pending is None:
                finish = t + snapshot_s + device.train_seconds(tm)
                plan = planner.plan(blocks)
                pending = device.pending = Pending(server.version, server.weights, blocks, finish, plan)
            arrive = device.next_online(max(masked_open, pending.ready_at)) + upload_s
            queue.push(arrive, "masked", device)
        accepted: list[SimDevice] = []
        close = deadline
        while queue:
            at, kind, data = queue.pop()
            if kind == "deadline":
                break
            accepted.append(data)  # type: ignore[arg-type]
            if len(accepted) == method.clients_per_round:
                close = at
                break
        trace.rounds += 1
        round_id += 1
        if len(accepted) < method.min_clients:
            trace.abandoned += 1
            t = close
            continue
        total = np.zeros(encoder.encoded_length, np.uint64)
        np_rng = np.random.default_rng(rng.getrandbits(64))
        for device in accepted:
            pending = device.pending
            assert pending is not None
            tau = server.version - pending.base
            result = device.delta(pending)
            norm = float(np.linalg.norm(result.delta.astype(np.float64)))
            weight = example_weight(result, cap) * policy.weight(tau, norm)
            total += encoder.encode(result.delta, weight, np_rng)
            device.pending = None
            trace.bytes_up.append(int(sizes["total"]))
            trace.staleness.append(tau)
            trace.stale += tau > 0
        trace.contributions += len(accepted)
        summed = (total & np.uint64((1 << method.bits) - 1)).astype(np.uint32)
        mean, _ = UpdateDecoder(config, dim).decode(summed, len(accepted))
        full = np.zeros(server.dim, np.float32)
        offset = 0
        for part in slices:
            size = part.stop - part.start
            full[part] = mean[offset : offset + size]
            offset += size
        if method.rotation_step and blocks:
            # as the engine does with AggregatorConfig.rotation_step
            scales = rotation_scales(server.layout_blocks, planner.budget, planner.profile)
            for name in blocks:
                full[server.block_slices[name]] *= np.float32(scales.get(name, 1.0))
        server.apply(full)
        # unmask: the survivor notice down, the reveals up
        t = close + 2 * tm.latency_s + sizes["reveal"] / tm.up_bytes_per_s
        trace.record(t, server.accuracy())
    return trace


def capped(trace: Trace, budget: int) -> bool:
    """A run also ends after ``budget`` contributions (a fixed training budget keeps runs short)."""
    return trace.contributions >= budget


RUNNERS = {"sync": run_sync, "fedbuff": run_fedbuff, "fedmq": run_fedmq}


def run_method(
    workload: Workload,
    method: Method,
    n_devices: int,
    straggler_fraction: float,
    availability: Availability,
    tm: TimeModel,
    horizon: float,
    seed: int,
) -> Trace:
    torch.manual_seed(seed)
    devices = build_fleet(workload, n_devices, straggler_fraction, availability, horizon, seed)
    server = Server(workload, ServerOptimizerConfig(method.server_optimizer, method.server_lr))
    cap = max(workload.device_sizes)
    return RUNNERS[method.kind](server, devices, method, tm, horizon, cap, random.Random(seed + 17))


# -- memory ---------------------------------------------------------------------------------------


def memory_for(
    workload: Workload, method: Method, block_sets: set[tuple[str, ...] | None]
) -> dict[str, object]:
    """Measured peak training memory of one device for every block set a method trained, at the
    micro-batch its memory plan chose."""
    planner = MemoryPlanner.of(workload, method.budget_fraction)
    per_set = {}
    for blocks in sorted(block_sets, key=lambda b: (b is not None, b or ())):
        label = "all" if blocks is None else "+".join(blocks)
        plan = planner.plan(blocks)
        per_set[label] = {**planner.memory(blocks).to_json(), "momentum": plan is None or plan.momentum}
    out: dict[str, object] = {
        "per_block_set": per_set,
        "peak": max(m["peak"] for m in per_set.values()),
        "budget": planner.budget,
    }
    if planner.profile is not None:
        out["activation_profile"] = planner.profile
    return out


# -- real MQTT ------------------------------------------------------------------------------------


def real_mqtt(quick: bool) -> dict[str, object]:
    """Three methods over real Mosquitto with 1/3 of the devices slowed down (wall-clock seconds)."""
    from simulator.broker import MosquittoBroker
    from simulator.fleet import FleetConfig, run_fleet

    clients, slow, delay = 12, 4, 3.0
    rounds = 6 if quick else 10
    k = 6
    # SecAgg+ at 8 admitted (1.3 x 6) leaves too few surviving neighbours for the threshold once the
    # round closes at K (rounds abandoned: "only 4 neighbours survived, below the threshold 5"), so
    # fedmq's buffer is 9 of 12 (all 12 admitted).
    k_secure = 9
    common = dict(clients=clients, task=TASK, seed=0, slow_clients=slow, slow_delay_s=delay, central_epochs=1)
    configs = {
        "fedavg (plain f32, waits for all)": FleetConfig(
            **common, rounds=rounds, secure=False, target_clients=clients, min_clients=1, window_s=30.0
        ),
        "buffered (plain f32, closes at K)": FleetConfig(
            **common, rounds=rounds, secure=False, target_clients=k, min_clients=2, window_s=30.0
        ),
        "fedmq (secure 12-bit p=0.3, K=9 + 1.3x, stale deltas, trains ahead, keys 1 s)": FleetConfig(
            **common,
            rounds=rounds,
            secure=True,
            target_clients=k_secure,
            min_clients=2,
            window_s=1.5,
            # 12 admitted = the whole fleet, but the 4 slow devices train ahead without advertising: on
            # loopback adverts arrive within milliseconds, so 1 s is ample for the keys phase.
            keys_window_s=1.0,
            codec_bits=12,
            clip_norm=1.0,
            subsample_rate=0.3,
        ),
    }
    out: dict[str, object] = {
        "clients": clients,
        "slow_clients": slow,
        "slow_delay_s": delay,
        "K": k,
        "rounds": rounds,
        "methods": {},
    }
    with MosquittoBroker() as broker:
        for name, cfg in configs.items():
            with tempfile.TemporaryDirectory() as store:
                report = asyncio.run(run_fleet(cfg, broker.url, Path(store)))
            curve = [(r.elapsed_s, r.accuracy) for r in report.per_round if r.status == "closed"]
            out["methods"][name] = {  # type: ignore[index]
                "final_accuracy": report.final_accuracy,
                "wall_s": report.wall_s,
                "bytes_up_per_client_round": report.bytes_up_per_client_round,
                "curve": curve,
                "config": {
                    "secure": cfg.secure,
                    "target_clients": cfg.target_clients,
                    "window_s": cfg.window_s,
                },
            }
    return out


# -- report ---------------------------------------------------------------------------------------


def summarise(trace: Trace, target: float) -> dict[str, object]:
    return {
        "method": trace.method,
        "time_to_target_s": trace.time_to(target),
        "final_accuracy": trace.accuracies[-1],
        "final_accuracy_last10": float(np.mean(trace.accuracies[-FINAL_WINDOW:])),
        "best_accuracy": max(trace.accuracies),
        "rounds": trace.rounds,
        "abandoned_rounds": trace.abandoned,
        "contributions": trace.contributions,
        "stale_contributions": trace.stale,
        "discarded_stale": trace.discarded,
        "mean_staleness": float(np.mean(trace.staleness)) if trace.staleness else 0.0,
        "bytes_up_per_device_round": float(np.mean(trace.bytes_up)) if trace.bytes_up else 0.0,
        "block_sets": sorted("all" if b is None else "+".join(b) for b in trace.block_sets),
        "curve": [[round(t, 2), round(a, 4)] for t, a in zip(trace.times, trace.accuracies, strict=True)],
    }


def plot(rows: list[dict], real: dict | None, target: float, directory: Path) -> list[str]:
    """PNG curves of accuracy against time into ``directory`` (beside the JSON: ``fleet.json`` ->
    ``fleet/``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for n in sorted({r["devices"] for r in rows}):
        fractions = sorted({r["stragglers"] for r in rows if r["devices"] == n})
        fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 4), squeeze=False)
        for ax, s in zip(axes[0], fractions, strict=True):
            for r in rows:
                if r["devices"] == n and r["stragglers"] == s:
                    curve = np.array(r["curve"])
                    ax.plot(curve[:, 0], curve[:, 1], label=r["method"])
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            ax.set_title(f"{n} devices, {s:.0%} stragglers")
            ax.set_xlabel("virtual time (s)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
            ax.legend(loc="lower right")
        fig.tight_layout()
        path = directory / f"accuracy_vs_time_{n}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(_shown(path))
    if real:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, m in real["methods"].items():
            curve = np.array(m["curve"]) if m["curve"] else np.zeros((0, 2))
            ax.plot(curve[:, 0], curve[:, 1], marker="o", label=name)
        ax.set_xlabel("wall-clock time (s), real MQTT")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{real['clients']} devices, {real['slow_clients']} slowed by {real['slow_delay_s']} s")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = directory / "real_mqtt.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(_shown(path))
    return written


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def speedup(rows: list[dict], n: int, s: float, method: str = "fedmq") -> float | None:
    def ttt(name: str) -> float | None:
        return next(
            (
                r["time_to_target_s"]
                for r in rows
                if r["devices"] == n and r["stragglers"] == s and r["method"] == name
            ),
            None,
        )

    if not any(r["devices"] == n and r["stragglers"] == s and r["method"] == "fedavg" for r in rows):
        return None  # FedAvg was not run
    base, ours = ttt("fedavg"), ttt(method)
    if ours is None:
        return None
    if base is None:
        return math.inf  # FedAvg never reached the target within the horizon
    return base / ours


def targets(rows: list[dict], memory: dict, bytes_ref: float) -> list[dict]:
    out = []
    for s, need in ((0.5, 2.0), (0.9, 5.0)):
        for n in sorted({r["devices"] for r in rows}):
            if not any(r["stragglers"] == s and r["devices"] == n for r in rows):
                continue
            for name in ("fedmq", "fedmq-full"):
                value = speedup(rows, n, s, name)
                out.append(
                    {
                        "target": f"time to target, {s:.0%} stragglers, {n} devices: "
                        f"{name} >= {need:g}x faster "
                        "than FedAvg" + (" (ablation, no partial training)" if name != "fedmq" else ""),
                        "value": value,
                        "ok": value is not None and value >= need,
                    }
                )
    ratio = memory["fedmq"]["peak"] / memory["fedmq-full"]["peak"]
    out.append(
        {
            "target": "device peak training memory, partial / full training <= 0.2 "
            "(measured, incl. activations)",
            "value": ratio,
            "ok": ratio <= 0.2,
        }
    )
    ablations = [
        (
            r,
            next(
                a
                for a in rows
                if a["method"] == "fedmq-full"
                and a["devices"] == r["devices"]
                and a["stragglers"] == r["stragglers"]
            ),
        )
        for r in rows
        if r["method"] == "fedmq"
        and any(
            a["method"] == "fedmq-full"
            and a["devices"] == r["devices"]
            and a["stragglers"] == r["stragglers"]
            for a in rows
        )
    ]
    key = "final_accuracy_last10"
    gap = max(a[key] - r[key] for r, a in ablations) if ablations else math.nan
    out.append(
        {
            "target": "final accuracy (mean of the last 10 evaluations) with partial training at most "
            "0.02 below full training (worst setting)",
            "value": gap,
            "ok": gap <= 0.02,
        }
    )
    fedmq_bytes_mean = float(
        np.mean([r["bytes_up_per_device_round"] for r in rows if r["method"] == "fedmq"])
    )
    out.append(
        {
            "target": "bytes up per device per round (incl. SecAgg+ keys/shares/reveal) "
            "<= 0.15x float32 FedAvg",
            "value": fedmq_bytes_mean / bytes_ref,
            "ok": fedmq_bytes_mean / bytes_ref <= 0.15,
        }
    )
    payload = float(np.mean([r["masked_payload_bytes"] for r in rows if r["method"] == "fedmq"]))
    out.append(
        {
            "target": "(supplementary) masked update payload alone <= 0.15x float32 FedAvg update",
            "value": payload / bytes_ref,
            "ok": payload / bytes_ref <= 0.15,
        }
    )
    return out


def main() -> None:
    global CONTRIBUTION_BUDGET
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json",
        type=Path,
        help="write the results here (default benchmarks/results/fleet.json); plots beside it",
    )
    parser.add_argument("--quick", action="store_true", help="100 devices, shorter horizon, short real run")
    parser.add_argument("--no-mqtt", action="store_true", help="skip the real-MQTT run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=BUDGET_FRACTION,
        help="fedmq's device memory budget as a fraction of full training's measured peak",
    )
    parser.add_argument("--fleets", type=int, nargs="+", help="fleet sizes (default 100 500)")
    parser.add_argument("--stragglers", type=float, nargs="+", help="straggler fractions (default 0 .5 .9)")
    parser.add_argument("--methods", nargs="+", help="only these methods (for exploration)")
    parser.add_argument(
        "--contributions", type=int, help=f"contribution budget per run (default {CONTRIBUTION_BUDGET})"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="simulations run in parallel (default: CPUs)"
    )
    parser.add_argument(
        "--fedmq",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override fedmq's settings (and its ablation's), e.g. clients_per_round=5 deadline_s=8",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    started = time.perf_counter()
    torch.set_num_threads(1)

    fleets = args.fleets or ([100] if args.quick else [100, 500])
    fractions = args.stragglers or [0.0, 0.5, 0.9]
    CONTRIBUTION_BUDGET = args.contributions or (1200 if args.quick else CONTRIBUTION_BUDGET)
    tm, availability = TimeModel(), Availability()
    methods = [
        override(m, args.fedmq) if m.kind == "fedmq" else m for m in default_methods(args.budget_fraction)
    ]
    fedmq = next(m for m in methods if m.kind == "fedmq")
    everything = [*methods, ablation(fedmq)]
    runs = [
        Run(n, s, method, args.seed, CONTRIBUTION_BUDGET)
        for n in fleets
        for s in fractions
        for method in everything
        if not args.methods or method.name in args.methods
    ]
    rows = run_all(runs, args.jobs, console)
    roster_sizes = set().union(*(r.pop("roster_sizes") for r in rows))
    workloads = {n: get_workload(TASK, min(n, MAX_SHARDS), seed=args.seed) for n in fleets}
    workload = workloads[fleets[0]]
    memory = {}
    for method in [*methods, ablation(fedmq)]:
        sets = set().union(*(r["block_sets_raw"] for r in rows if r["method"] == method.name)) or {None}
        memory[method.name] = memory_for(workload, method, sets)
    dim = workload.federated_model().dim
    bytes_ref = float(float32_update_bytes(dim))
    for row in rows:
        row["peak_train_memory_bytes"] = memory[row["method"]]["peak"]
        del row["block_sets_raw"]
        if row["method"].startswith("fedmq"):
            row["masked_payload_bytes"] = _mean_payload(
                row, fedmq if row["method"] == "fedmq" else ablation(fedmq), dim, workload
            )
    central = workload.central_baseline()
    real = None if args.no_mqtt else real_mqtt(args.quick)
    out = args.json or RESULTS / "fleet.json"
    plots = plot(rows, real, TARGET_ACCURACY, out.parent / out.stem)
    checks = targets(rows, memory, bytes_ref)
    results = {
        "task": TASK,
        "target_accuracy": TARGET_ACCURACY,
        "central_accuracy": central,
        "float32_fedavg_update_bytes": bytes_ref,
        "rows": rows,
        "memory": memory,
        "secagg_overhead_per_device": {str(k): v for k, v in _overheads(roster_sizes).items()},
        "real_mqtt": real,
        "targets": checks,
        "settings": {
            "fleets": fleets,
            "straggler_fractions": fractions,
            "horizon_virtual_s": HORIZON_S,
            "contribution_budget": CONTRIBUTION_BUDGET,
            "time_model": asdict(tm),
            "availability": asdict(availability),
            "methods": [m.to_json() for m in [*methods, ablation(fedmq)]],
            "max_shards": MAX_SHARDS,
            "train_config": asdict(workload.train_config),
            "seed": args.seed,
            "simulated": "time (event queue, virtual seconds), availability, MQTT transport, admission race",
            "real": "LocalTrainer, freezing, choose_blocks, StalenessPolicy, UpdateEncoder/Decoder, "
            "Float32Codec, ServerOptimizer, wire encodings, SecAgg+ message sizes, memory",
        },
        "plots": plots,
        "reproduce": ".venv/bin/python benchmarks/fleet.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "platform": platform.platform(),
        "wall_s": time.perf_counter() - started,
    }
    report(console, results)
    text = json.dumps(results, indent=2, default=_json_default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"results: {out}, plots: {', '.join(plots)}")


@dataclass(frozen=True)
class Run:
    """One (fleet size, straggler fraction, method) simulation: the unit a worker process runs."""

    devices: int
    stragglers: float
    method: Method
    seed: int
    contributions: int


def run_one(run: Run) -> dict:
    """Simulate ``run`` and summarise it (in a worker process: everything it needs is rebuilt here)."""
    global CONTRIBUTION_BUDGET
    CONTRIBUTION_BUDGET = run.contributions
    torch.set_num_threads(1)
    workload = get_workload(TASK, min(run.devices, MAX_SHARDS), seed=run.seed)
    t0 = time.perf_counter()
    trace = run_method(
        workload, run.method, run.devices, run.stragglers, Availability(), TimeModel(), HORIZON_S, run.seed
    )
    return {
        "devices": run.devices,
        "stragglers": run.stragglers,
        **summarise(trace, TARGET_ACCURACY),
        "sim_wall_s": time.perf_counter() - t0,
        "block_sets_raw": trace.block_sets,
        "roster_sizes": trace.roster_sizes,
    }


def run_all(runs: list[Run], jobs: int, console: Console) -> list[dict]:
    """Every run, on ``jobs`` processes (each simulation is sequential and single-threaded); rows come
    back in ``runs`` order whatever order they finish in."""
    rows: list[dict | None] = [None] * len(runs)
    with Progress(console=console) as progress:
        bar = progress.add_task("fleet simulations", total=len(runs))

        def done(i: int, row: dict) -> None:
            rows[i] = row
            progress.advance(bar)
            progress.console.print(
                f"  {row['devices']} devices, {row['stragglers']:.0%} stragglers, {row['method']}: final "
                f"{row['final_accuracy']:.3f}, to {TARGET_ACCURACY}: {row['time_to_target_s']}, "
                f"{row['sim_wall_s']:.1f}s"
            )

        if jobs <= 1:
            for i, run in enumerate(runs):
                done(i, run_one(run))
        else:
            # spawn, not fork: forking a process that has used torch's thread pools can hang
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_one, run): i for i, run in enumerate(runs)}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    return [row for row in rows if row is not None]


def _mean_payload(row: dict, method: Method, dim: int, workload: Workload) -> float:
    """Mean packed masked-vector bytes over the block sets fedmq trained (header excluded)."""
    model = workload.federated_model()
    sizes = []
    for label in row["block_sets"]:
        blocks = None if label == "all" else label.split("+")
        d = sum(s.stop - s.start for s in model.block_slices(blocks))
        config = CodecConfig(
            method.bits, method.clip_norm, 13, bytes(32), subsample_rate=method.subsample_rate
        )
        sizes.append(packed_size(UpdateEncoder(config, d).encoded_length, method.bits))
    return float(np.mean(sizes))


def _overheads(sizes: set[int]) -> dict[int, dict[str, float]]:
    """The SecAgg+ overhead of every roster size the fedmq rounds used."""
    return {n: secagg_overhead(n) for n in sorted(sizes)}


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def report(console: Console, results: dict) -> None:
    target = results["target_accuracy"]
    table = Table(title=f"Fleet experiment on digits (virtual time; target accuracy {target})")
    for col in (
        "devices",
        "stragglers",
        "method",
        f"time to {target} (s)",
        "final acc",
        "last 10 mean",
        "best acc",
        "rounds",
        "stale",
        "peak train mem",
        "bytes up/dev/round",
    ):
        table.add_column(col, justify="right")
    for r in results["rows"]:
        ttt = r["time_to_target_s"]
        table.add_row(
            str(r["devices"]),
            f"{r['stragglers']:.0%}",
            r["method"],
            "never" if ttt is None else f"{ttt:.0f}",
            f"{r['final_accuracy']:.3f}",
            f"{r['final_accuracy_last10']:.3f}",
            f"{r['best_accuracy']:.3f}",
            str(r["rounds"]),
            str(r["stale_contributions"]),
            f"{r['peak_train_memory_bytes'] / 1024:.1f} KiB",
            f"{r['bytes_up_per_device_round']:,.0f}",
        )
    table.add_row("", "", "central", "", f"{results['central_accuracy']:.3f}", "", "", "", "", "", "")
    console.print(table)
    real = results.get("real_mqtt")
    if real:
        rt = Table(
            title=f"Real MQTT: {real['clients']} devices, {real['slow_clients']} slowed by "
            f"{real['slow_delay_s']} s per training, {real['rounds']} rounds (wall-clock)"
        )
        for col in ("method", f"time to {REAL_TARGET}", "final acc", "wall s", "bytes up/dev/round"):
            rt.add_column(col, justify="right")
        for name, m in real["methods"].items():
            ttt = next((t for t, a in m["curve"] if a >= REAL_TARGET), None)
            rt.add_row(
                name,
                "never" if ttt is None else f"{ttt:.1f}",
                f"{m['final_accuracy']:.3f}",
                f"{m['wall_s']:.1f}",
                f"{m['bytes_up_per_client_round']:,.0f}",
            )
        console.print(rt)
    for check in results["targets"]:
        value = check["value"]
        shown = "n/a" if value is None else ("inf" if math.isinf(value) else f"{value:.3f}")
        console.print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['target']}: {shown}")
    console.print(f"reproduce: {results['reproduce']}   ({results['wall_s']:.0f} s)")


REAL_TARGET = 0.7

if __name__ == "__main__":
    main()
