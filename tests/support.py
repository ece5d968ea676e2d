"""Building blocks the tests share (devices on a broker, bounded polling)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

import nacl.signing
import numpy as np
import pytest
import torch

from aggregator.config import AggregatorConfig
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.clock import SYSTEM_CLOCK, Clock
from shared.codec import CodecConfig
from shared.mqtt import MqttConfig
from shared.snapshots import ModelSnapshot, make_snapshot
from simulator.broker import MosquittoBroker
from simulator.data import dirichlet_partition
from simulator.harness import running
from simulator.models import digits_mlp

#: Run a test on every broker of the integration suite: Mosquitto (MQTT 5), NATS (MQTT 3.1.1 over
#: JetStream) and RabbitMQ 3.10 (MQTT plugin, 3.1.1; ~15 s to start, so the core tests only: rounds,
#: secure round, retained snapshot for a late device, offline queue). For tests taking ``broker``.
every_broker = pytest.mark.parametrize("broker", ["mosquitto", "nats", "rabbitmq"], indirect=True)
#: The two brokers every other broker-sensitive test runs on (chunking, crashes, restarts, presence).
mosquitto_and_nats = pytest.mark.parametrize("broker", ["mosquitto", "nats"], indirect=True)


def mqtt_config(broker: MosquittoBroker, client_id: str, **overrides: object) -> MqttConfig:
    """Fast reconnects and short deadlines for tests."""
    return mqtt_url_config(broker.url, client_id, **overrides)


def mqtt_url_config(url: str, client_id: str, **overrides: object) -> MqttConfig:
    """:func:`mqtt_config` for a URL (several endpoints, options) rather than a broker object."""
    values: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "connect_timeout_s": 5.0}
    values.update(overrides)
    return MqttConfig.from_url(url, client_id=client_id, **values)


def make_devices(
    broker: MosquittoBroker,
    digits,
    n: int,
    aggregator_key: bytes | None,
    federation: str = "test",
    epochs: int = 2,
    prefix: str = "dev",
    chunk_limit: int | None = None,
    url_for: Callable[[int], str] | None = None,
) -> list[EdgeClient]:
    """``n`` plain-mode devices on a Dirichlet split of digits; ``url_for(i)`` gives device i its own
    broker URL (a cluster's endpoint list starting at its node), else all use ``broker.url``."""
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
        cid = f"{prefix}-{i:03d}"
        mqtt = mqtt_config(broker, cid) if url_for is None else mqtt_url_config(url_for(i), cid)
        cfg = EdgeConfig(federation, mqtt, aggregator_key, **extra)
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


def initial_snapshot(federation: str) -> ModelSnapshot:
    """Version 0 of a fresh digits model (:func:`initial_weights`), for an aggregator's ``initial``."""
    model, weights = initial_weights()
    return make_snapshot(federation, 0, -1, model.layout, weights)


def secure_config(
    tmp_path: Path,
    federation: str,
    mqtt: MqttConfig,
    keys: dict[str, nacl.signing.SigningKey],
    *,
    windows: PhaseWindows,
    min_clients: int,
    bits: int = 16,
) -> AggregatorConfig:
    """A secure aggregator for every enrolled identity in ``keys`` (all of them targeted), storing under
    ``tmp_path/agg``, with the tests' codec (clip 5, one expected client, a fixed seed): the tests that
    build one differ only in their phase windows, their quorum and the encodings' width."""
    return AggregatorConfig(
        federation=federation,
        mqtt=mqtt,
        store_dir=tmp_path / "agg",
        directory=directory_of(keys),
        codec=CodecConfig(bits=bits, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=windows,
        min_clients=min_clients,
        target_clients=len(keys),
    )


def broker_with_accounts(
    keys: dict[str, nacl.signing.SigningKey], workdir: Path, federation: str
) -> tuple[MosquittoBroker, Callable[[str], MqttConfig]]:
    """A started Mosquitto enforcing the shipped ACL, with one account per enrolled device and one for
    the aggregator (username = client id, random passwords), and the MQTT config each logs in with."""
    accounts = {user: secrets.token_hex(8) for user in [*keys, "aggregator"]}
    broker = MosquittoBroker.with_accounts(accounts, workdir, federation=federation).start()

    def creds(user: str) -> MqttConfig:
        return mqtt_config(broker, user, username=user, password=accounts[user])

    return broker, creds


def enrol(n: int) -> dict[str, nacl.signing.SigningKey]:
    """Fresh Ed25519 identities for devices ``dev-00`` .. ``dev-<n-1>``."""
    return {f"dev-{i:02d}": nacl.signing.SigningKey.generate() for i in range(n)}


def directory_of(keys: dict[str, nacl.signing.SigningKey]) -> dict[str, bytes]:
    return {cid: bytes(key.verify_key) for cid, key in keys.items()}


def digit_shards(digits, n: int, seed: int = 0) -> list[np.ndarray]:
    """The Dirichlet split :func:`secure_devices` trains on: device i of ``n`` gets shard i, so a device
    that runs elsewhere (a JS device) can be handed the shard of the identity it plays."""
    return dirichlet_partition(digits.y_train, n, alpha=0.5, seed=seed)


def secure_devices(
    broker: MosquittoBroker,
    digits,
    keys: dict[str, nacl.signing.SigningKey],
    verify_key: bytes,
    federation: str,
    *,
    mqtt: Callable[[str], MqttConfig] | None = None,
    seed: int = 0,
    budgets: dict[str, int] | None = None,
    trainer_cls: type[LocalTrainer] = LocalTrainer,
    clock_for: Callable[[str], Clock] | None = None,
    skip: Collection[str] = (),
) -> list[EdgeClient]:
    """One secure-aggregation device per enrolled identity, on a Dirichlet split of digits (one local
    epoch). Each keeps its pre-mask encodings so tests can compare the unmasked sum with an oracle.
    Identities in ``skip`` get no Python device (another process plays them) but keep their shard and
    their place in every device's directory."""
    directory = directory_of(keys)
    shards = digit_shards(digits, len(keys), seed)
    devices = []
    for (cid, key), shard in zip(keys.items(), shards):
        if cid in skip:
            continue
        trainer = trainer_cls(
            FederatedModel(digits_mlp()),
            torch.from_numpy(digits.x_train[shard]),
            torch.from_numpy(digits.y_train[shard]),
            TrainConfig(epochs=1, lr=0.1),
        )
        config = EdgeConfig(
            federation,
            mqtt(cid) if mqtt is not None else mqtt_config(broker, cid),
            verify_key,
            identity=key,
            directory=directory,
            memory_budget=(budgets or {}).get(cid),
        )
        device = EdgeClient(config, trainer, clock=clock_for(cid) if clock_for else SYSTEM_CLOCK)
        device.keep_encoded = True
        devices.append(device)
    return devices


async def run_rounds(
    aggregator,
    devices: list[EdgeClient],
    rounds: int,
    timeout: float = 90,
    ready: Callable[[], bool] | None = None,
    until: Callable[[], bool] | None = None,
    between: Callable[[], Awaitable[None]] | None = None,
) -> list:
    """Connect ``devices`` (waiting until each is connected and subscribed), optionally wait until
    ``ready()``, run up to ``rounds`` rounds (stopping after the first round at whose end ``until()``
    holds; awaiting ``between()`` after each), disconnect."""
    async with running(devices):
        # The first round's windows (a secure round's keys phase: a few seconds) are for the round, not
        # for a loaded machine's connects: a device that connected late missed round 0.
        await eventually(lambda: all(d.conn.connected for d in devices), 30, what="devices connected")
        if ready is not None:
            await eventually(ready, 30, what="devices ready")  # connects on a loaded 2-core machine

        async def rounds_until() -> list:
            results: list = []
            while len(results) < rounds:
                ran = await aggregator.run(1)
                results += ran
                if not ran or (until is not None and until()):  # stopped (budget) or condition met
                    break
                if between is not None:
                    await between()
            return results

        return await asyncio.wait_for(rounds_until(), timeout=timeout)
