"""One training at a time on a trainer: a discarded delta whose training still runs never has a second
training started beside it, and the time estimate never runs beside a training (they share the module)."""

from __future__ import annotations

import asyncio
import threading
import time

import nacl.signing
import numpy as np
import torch
from torch import nn

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig, TrainingInterrupted
from shared.codec import CodecConfig
from shared.mqtt import MqttConfig
from shared.plan import PhaseWindows, RoundPlan
from shared.signing import sign
from shared.snapshots import make_snapshot
from shared.staleness import StalenessPolicy
from shared.wire import PHASE_COLLECT, PHASE_KEYS, RoundAnnounce


class ConcurrencyProbe:
    """A loss function that records how many threads are inside it at once (and is slow enough for
    two unguarded users of the module to overlap)."""

    def __init__(self, hold_s: float = 0.002) -> None:
        self.active = 0
        self.most = 0
        self.calls = 0
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            self.release.wait(timeout=30)
            time.sleep(self.hold_s)
            return nn.functional.cross_entropy(logits, labels)
        finally:
            with self._lock:
                self.active -= 1


def small_trainer(probe: ConcurrencyProbe) -> LocalTrainer:
    torch.manual_seed(0)
    model = FederatedModel(nn.Sequential(nn.Linear(8, 4)))
    x = torch.randn(64, 8)
    y = torch.randint(0, 4, (64,))
    return LocalTrainer(model, x, y, TrainConfig(epochs=2, batch_size=16, lr=0.1), loss_fn=probe)


def unconnected_config(aggregator: nacl.signing.SigningKey, **extra) -> EdgeConfig:
    """Device ``dev-0`` of federation ``fed``; its broker URL is never connected in these tests."""
    mqtt = MqttConfig.from_url("mqtt://127.0.0.1:9", client_id="dev-0")
    return EdgeConfig("fed", mqtt, bytes(aggregator.verify_key), **extra)


def test_estimate_never_runs_beside_a_training():
    probe = ConcurrencyProbe()
    trainer = small_trainer(probe)
    weights = trainer.model.get_flat()
    training = threading.Thread(target=trainer.train, args=(weights,))
    training.start()
    while probe.calls == 0:
        time.sleep(0.001)
    estimates = [threading.Thread(target=trainer.estimate_seconds) for _ in range(3)]
    for thread in estimates:
        thread.start()
    for thread in [training, *estimates]:
        thread.join(timeout=60)
    assert probe.most == 1, f"{probe.most} users of the module at once"
    assert probe.calls == 2 * 4 + 3  # eight training steps and three estimates, one after the other


async def test_a_discarded_delta_still_training_never_gets_a_second_training_beside_it(caplog):
    aggregator = nacl.signing.SigningKey.generate()
    identity = nacl.signing.SigningKey.generate()
    probe = ConcurrencyProbe()
    trainer = small_trainer(probe)
    directory = {"dev-0": bytes(identity.verify_key), "dev-1": bytes(identity.verify_key)}
    config = unconnected_config(aggregator, identity=identity, directory=directory, train_ahead=False)
    device = EdgeClient(config, trainer)
    layout, weights = trainer.model.layout, trainer.model.get_flat()
    policy = StalenessPolicy(max_staleness=1)

    def announce(round_id: int, base: int) -> RoundAnnounce:
        now = time.time()
        codec = CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32))
        windows = PhaseWindows(keys=5, shares=5, masked=5)
        secure = RoundPlan(mode="secure", staleness=policy, windows=windows, codec=codec)
        return sign(
            RoundAnnounce(federation="fed", round_id=round_id, base_version=base, phase=PHASE_KEYS,
                          opened_at=now, deadline=now + 60, min_clients=1, target_clients=2, plan=secure),
            aggregator,
        )  # fmt: skip

    probe.release.clear()  # the first training blocks inside its first step
    try:
        await _discard_while_training(device, probe, announce, layout, weights, aggregator)
    finally:
        probe.release.set()  # never leave a worker thread blocked behind a failed assertion
        for task in list(device._tasks):
            task.cancel()
        await asyncio.gather(*device._tasks, return_exceptions=True)


async def _discard_while_training(device, probe, announce, layout, weights, aggregator) -> None:
    device._on_snapshot(make_snapshot("fed", 0, -1, layout, weights, aggregator))
    device._on_round(announce(0, 0))
    first = device._pending
    assert first is not None and not first.task.done()
    while probe.calls == 0:
        await asyncio.sleep(0.001)
    # The model moves on by three versions: the running delta is now too stale and is discarded ...
    device._on_snapshot(make_snapshot("fed", 3, 2, layout, weights + np.float32(0.01), aggregator))
    device._on_round(announce(1, 3))
    # ... but its training still runs, so no second training starts on the same model.
    assert device._pending is None and probe.active == 1 and probe.calls == 1
    assert device.stats.rounds_joined == 0
    probe.release.set()
    await asyncio.wait_for(asyncio.shield(first.task), 30)
    assert probe.most == 1
    # Once it is done, the next round trains afresh.
    device._on_round(announce(2, 3))
    assert device._pending is not None and device._pending.base == 3
    await asyncio.wait_for(asyncio.shield(device._pending.task), 30)
    assert probe.most == 1


def test_interrupt_stops_a_running_training_at_its_next_step():
    """A device told to stop must not wait for a whole local training in its worker thread."""
    probe = ConcurrencyProbe(hold_s=0.0)
    trainer = small_trainer(probe)
    trainer.config = TrainConfig(epochs=100_000, batch_size=16, lr=0.1)  # far longer than the test
    outcome: list[BaseException] = []

    def train() -> None:
        try:
            trainer.train(trainer.model.get_flat())
        except BaseException as exc:  # recorded for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=train)
    thread.start()
    while probe.calls < 3:
        time.sleep(0.001)
    trainer.interrupt()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TrainingInterrupted), outcome
    assert probe.calls < 400_000 // 2  # stopped long before the end
    trainer.interrupt()  # nothing running: the next training is not affected
    trainer.config = TrainConfig(epochs=1, batch_size=16, lr=0.1)
    assert trainer.train(trainer.model.get_flat()).num_examples == 64


async def test_closing_while_training_leaves_no_training_task_behind():
    """Cancelling a plain-round training re-checks for work when it ends; on a closing device that check
    must not start a new training the close never sees (it was left pending when the loop closed)."""
    aggregator = nacl.signing.SigningKey.generate()
    probe = ConcurrencyProbe()
    trainer = small_trainer(probe)
    config = unconnected_config(aggregator)
    device = EdgeClient(config, trainer)
    layout, weights = trainer.model.layout, trainer.model.get_flat()
    now = time.time()
    announce = RoundAnnounce(federation="fed", round_id=0, base_version=0, phase=PHASE_COLLECT,
                             opened_at=now, deadline=now + 60, min_clients=1, target_clients=1)  # fmt: skip
    probe.release.clear()  # the training blocks inside its first step
    try:
        device._on_snapshot(make_snapshot("fed", 0, -1, layout, weights, aggregator))
        device._on_round(sign(announce, aggregator))
        training = device._training
        assert training is not None and not training.done()
        while probe.calls == 0:
            await asyncio.sleep(0.001)
        await asyncio.wait_for(device.__aexit__(None, None, None), 30)
        for _ in range(5):  # let any callback the close scheduled run
            await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t.get_name() == "train-dev-0" and not t.done()]
        assert training.done() and left == [], left
    finally:
        probe.release.set()
