"""The three methods (synchronous FedAvg, FedBuff, fedmq) over the simulated fleet, and memory."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch

from aggregator.optimizer import ServerOptimizerConfig
from aggregator.rounds import choose_round_blocks, expand_partial
from benchmarks.fleet import sim
from benchmarks.fleet.sim import (
    MIN_SECURE_ROSTER,
    Availability,
    EventQueue,
    Method,
    Pending,
    Server,
    SimDevice,
    TimeModel,
    Trace,
    build_fleet,
    fedmq_bytes,
    float32_update_bytes,
)
from edge_client.memory import (
    TrainingMemory,
    TrainingPlan,
    activation_profile,
    measure_training_memory,
    plan_training,
)
from edge_client.model import FederatedModel
from edge_client.participation import Action, DevicePolicy, decide
from edge_client.trainer import TrainResult
from shared.codec import CodecConfig, Float32Codec, UpdateDecoder, UpdateEncoder
from shared.plan import MODE_SECURE, PhaseWindows, RoundPlan
from simulator.workloads import Workload

# -- the three methods -------------------------------------------------------------------------------


def example_weight(result: TrainResult, cap: int) -> float:
    """The device's bounded FedAvg weight, by the plan's rule (``RoundPlan.example_weight``)."""
    return RoundPlan(weight_cap=cap).example_weight(result.num_examples)


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
    while t < horizon and not capped(trace, sim.CONTRIBUTION_BUDGET):
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
        if t >= horizon or capped(trace, sim.CONTRIBUTION_BUDGET):
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
                self.model, self.x, self.y, w.train_config, w.loss_fn, blocks, budget=self.budget
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
    layout_slices = server.block_slices
    budgets = [planner.budget] if planner.budget is not None else []
    profiles = [planner.profile] if planner.profile is not None else []
    # The round's plan as the aggregator would announce it (rounds.plan_secure_round's fields): the
    # device rule reads the staleness policy, the masked window, the blocks and the weight cap from it.
    base_plan = RoundPlan(
        mode=MODE_SECURE,
        weight_cap=cap,
        windows=PhaseWindows(masked=method.deadline_s),
        staleness=policy,
        codec=CodecConfig(method.bits, method.clip_norm, 1, bytes(32), subsample_rate=method.subsample_rate),
    )
    device_policy = DevicePolicy(train_ahead=method.train_ahead, startup_s=snapshot_s)
    while t < horizon and not capped(trace, sim.CONTRIBUTION_BUDGET):
        # The engine's block choice (aggregator.rounds), from the budget and profile every device declares.
        choice = choose_round_blocks(server.layout_blocks, round_id, budgets=budgets, profiles=profiles)
        blocks = choice.blocks
        slices = [(b, layout_slices[b]) for b in blocks] if blocks else None
        dim = sum(s.stop - s.start for _, s in slices) if slices else server.dim
        round_plan = replace(base_plan, blocks=blocks)
        trace.block_sets.add(blocks)
        # Each online device applies the product's participation rule (edge_client.participation.decide):
        # discard, keep, skip, train ahead without advertising, or join. Those that join are eligible for
        # the roster (admission is a random draw among them; the losers do not train).
        eligible = []
        for device in devices:
            if not device.online(t):
                continue
            state = device.local_state(server.version, t)
            decision = decide(round_plan, server.version, state, device_policy)
            if decision.discard:
                trace.discarded += 1
                device.pending = None
            if decision.action is Action.TRAIN_AHEAD:
                finish = t + snapshot_s + device.train_seconds(tm)
                device.pending = Pending(server.version, server.weights, blocks, finish, planner.plan(blocks))
            elif decision.joins:
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
        round_plan = replace(round_plan, codec=replace(base_plan.codec, seed=rng.randbytes(32)))  # type: ignore[arg-type]
        config = round_plan.codec_for(n)
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
            weight = round_plan.example_weight(result.num_examples) * policy.weight(tau, norm)
            total += encoder.encode(result.delta, weight, np_rng)
            device.pending = None
            trace.bytes_up.append(int(sizes["total"]))
            trace.staleness.append(tau)
            trace.stale += tau > 0
        trace.contributions += len(accepted)
        summed = (total & np.uint64((1 << method.bits) - 1)).astype(np.uint32)
        mean, _ = UpdateDecoder(config, dim).decode(summed, len(accepted))
        # The engine's expansion of a partial mean (aggregator.rounds), rotation-scaled as configured.
        scales = choice.scales if method.rotation_step else None
        full = expand_partial(mean, dim=server.dim, slices=slices, scales=scales).mean
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
