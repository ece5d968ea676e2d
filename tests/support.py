"""Building blocks the tests share (devices on a broker, bounded polling)."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.mqtt import MqttConfig
from simulator.broker import MosquittoBroker
from simulator.data import dirichlet_partition
from simulator.models import digits_mlp


def mqtt_config(broker: MosquittoBroker, client_id: str, **overrides: object) -> MqttConfig:
    """Fast reconnects and short deadlines for tests."""
    values: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0}
    values.update(overrides)
    return MqttConfig.from_url(broker.url, client_id=client_id, **values)


def make_devices(
    broker: MosquittoBroker,
    digits,
    n: int,
    aggregator_key: bytes | None,
    federation: str = "test",
    epochs: int = 2,
    prefix: str = "dev",
    chunk_limit: int | None = None,
) -> list[EdgeClient]:
    shards = dirichlet_partition(digits.y_train, n, alpha=0.5, seed=0)
    devices = []
    for i, shard in enumerate(shards):
        trainer = LocalTrainer(
            FederatedModel(digits_mlp()),
            torch.from_numpy(digits.x_train[shard]),
            torch.from_numpy(digits.y_train[shard]),
            TrainConfig(epochs=epochs, lr=0.1, seed=i),
        )
        extra = {"chunk_limit": chunk_limit} if chunk_limit else {}
        cfg = EdgeConfig(federation, mqtt_config(broker, f"{prefix}-{i:03d}"), aggregator_key, **extra)
        devices.append(EdgeClient(cfg, trainer))
    return devices


async def eventually(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds (no unbounded waits)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def initial_weights() -> tuple[FederatedModel, np.ndarray]:
    model = FederatedModel(digits_mlp())
    return model, model.get_flat()
