"""``fedmq-edge`` / ``python -m edge_client``: run one device.

The model and data come either from a simulator workload (``--task digits --shard i --shards n``,
handy for docker-compose and demos) or from your own code: ``--model pkg.module:factory`` (or
``path/to/file.py:factory``) returning an ``nn.Module`` and ``--data file.npz`` holding arrays ``x``
and ``y``. Settings come from a TOML file (``--config device.toml``, as ``fedmq enroll`` writes it),
``FEDMQ_*`` environment variables and flags; secrets never from flags. Exit codes: ``shared/service.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.enrolment import DeviceEnrolment, DeviceRevoked, attach
from edge_client.model import FederatedModel
from edge_client.modelspec import load_factory
from edge_client.trainer import LocalTrainer, TrainConfig
from edge_client.watchdog import CompatibilityWatchdog
from shared.enrolment import read_list_file
from shared.errors import BrokerUnreachable, ConfigError, FedmqError
from shared.mqtt import MqttTimeout
from shared.service import EXIT_OK, LOG_OPTIONS, broker_options, mqtt_config, report_fatal, setup_logging
from shared.settings import Option, add_arguments, resolve
from shared.signing import load_or_create_key, read_directory

log = logging.getLogger("edge_client")

Opt = Option
OPTIONS: list[Option] = [
    Opt("federation", default="demo", flag="--federation", help="federation id"),
    *broker_options(None),
    *LOG_OPTIONS,
    Opt("device.aggregator_key", type="hexkey", flag="--aggregator-key",
        help="aggregator's public key (hex)"),
    Opt("device.identity", type="path", flag="--identity", help="secure mode: Ed25519 seed file"),
    Opt("device.authority_key", type="hexkey", help="enrolment authority's public key (live enrolment)"),
    Opt("device.enrolment", type="path", flag="--enrolment", help="signed enrolled set from the bundle"),
    Opt("device.directory", type="path", flag="--directory", help="static JSON {device id: hex public key}"),
    Opt("device.removal_grace", type="float", default=10.0,
        help="seconds a revoked peer stays known (rosters built before the revocation still verify)"),
    Opt("training.task", flag="--task", help="simulator workload (digits)"),
    Opt("training.shard", type="int", default=0, flag="--shard", help="simulator shard"),
    Opt("training.shards", type="int", default=1, flag="--shards", help="simulator shard count"),
    Opt("training.model", flag="--model", help="module:factory or file.py:factory returning an nn.Module"),
    Opt("training.data", type="path", flag="--data", help=".npz with arrays x and y"),
    Opt("training.loss", default="cross_entropy", flag="--loss",
        help="cross_entropy, mse, bce_logits, or module:function / file.py:function(outputs, labels)"),
    Opt("training.epochs", type="int", default=5, flag="--epochs", help="local epochs a round"),
    Opt("training.lr", type="float", default=0.05, flag="--lr", help="local learning rate"),
    Opt("training.batch_size", type="int", default=32, flag="--batch-size", help="local batch size"),
    Opt("training.memory_budget", type="int", flag="--memory-budget",
        help="bytes for local training: weights, gradients, optimizer state, activations (partial training)"),
    Opt("training.train_ahead", type="bool", default=True, flag="--train-ahead",
        help="secure rounds: train ahead instead of joining when training outlasts the masked window"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedmq-edge", description="fedmq edge device")
    add_arguments(p, OPTIONS)
    return p.parse_args(argv)


#: ``training.task`` names: (model factory, shard loader ``(shard, shards) -> (x, y)``) as ``module:attr``
#: references, resolved only when asked for, so the device package never imports the simulator.
TASKS = {"digits": ("simulator.models:digits_mlp", "simulator.data:digits_shard")}


def load_model_and_data(v: dict[str, Any]) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    task = v["training.task"]
    if task is not None:
        if task not in TASKS:
            raise ConfigError("training.task", f"unknown task {task!r} ({', '.join(TASKS)})")
        model_ref, data_ref = TASKS[task]
        shard_loader: Any = load_factory(data_ref, field="training.task")
        x, y = shard_loader(v["training.shard"], v["training.shards"])
        return load_factory(model_ref, field="training.task")(), torch.from_numpy(x), torch.from_numpy(y)
    if v["training.model"] and v["training.data"]:
        factory = load_factory(v["training.model"], base=v.get("config_dir"))
        try:
            arrays = np.load(v["training.data"])
            x, y = arrays["x"], arrays["y"]
        except (OSError, KeyError, ValueError) as exc:
            reason = f"{v['training.data']}: need an .npz with arrays x and y ({exc})"
            raise ConfigError("training.data", reason) from exc
        return factory(), torch.from_numpy(x), torch.from_numpy(y)
    raise ConfigError("training.model", "give training.task = 'digits', or training.model and training.data")


#: Built-in losses by name (``training.loss``); anything else is a ``module:function`` spec.
LOSSES = {
    "cross_entropy": torch.nn.functional.cross_entropy,
    "mse": torch.nn.functional.mse_loss,
    "bce_logits": torch.nn.functional.binary_cross_entropy_with_logits,
}


def load_loss(v: dict[str, Any]) -> Any:
    """The loss function ``training.loss`` names (a built-in, or your own function)."""
    name = v["training.loss"]
    if name in LOSSES:
        return LOSSES[name]
    return load_factory(name, base=v.get("config_dir"), field="training.loss")


def build(v: dict[str, Any]) -> tuple[EdgeConfig, DeviceEnrolment | None]:
    client_id = v["broker.client_id"]
    if not client_id:
        raise ConfigError("broker.client_id", "required: the device id")
    identity = load_or_create_key(v["device.identity"]) if v["device.identity"] else None
    enrolment = None
    directory: Mapping[str, bytes] | None = None
    if v["device.directory"] is not None:
        directory = read_directory(v["device.directory"])
    if v["device.enrolment"] is not None:
        if v["device.authority_key"] is None:
            raise ConfigError("device.authority_key", "needed to verify the enrolment list")
        enrolment = DeviceEnrolment(
            client_id, v["federation"], v["device.authority_key"], read_list_file(v["device.enrolment"]),
            removal_grace_s=v["device.removal_grace"],
        )  # fmt: skip
        directory = enrolment.directory
        if identity is not None and enrolment.directory.get(client_id) != bytes(identity.verify_key):
            raise ConfigError("device.identity", f"this key is not the one enrolled for {client_id!r}")
    config = EdgeConfig(
        federation=v["federation"],
        mqtt=mqtt_config(v, client_id),
        aggregator_key=v["device.aggregator_key"],
        identity=identity,
        directory=directory,
        memory_budget=v["training.memory_budget"],
        train_ahead=v["training.train_ahead"],
    )
    return config, enrolment


async def serve(config: EdgeConfig, trainer: LocalTrainer, enrolment: DeviceEnrolment | None,
                startup_timeout: float) -> None:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fatal: list[FedmqError] = []

    def revoked(exc: DeviceRevoked) -> None:
        fatal.append(exc)
        stop.set()

    async with EdgeClient(config, trainer) as device:
        if enrolment is not None:
            enrolment.on_revoked = revoked
            attach(device, enrolment)
            await device.conn.subscribe(enrolment.topic)
        runner = asyncio.create_task(device.run(stop))
        failed = asyncio.ensure_future(device.conn.failed())
        incompatible = asyncio.ensure_future(CompatibilityWatchdog(device).run())
        try:
            if startup_timeout:
                waiter = asyncio.ensure_future(device.conn.wait_connected(startup_timeout))
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper, runner}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if waiter.done() and isinstance(waiter.exception(), MqttTimeout):
                    where = f"{config.mqtt.host}:{config.mqtt.port}"
                    raise BrokerUnreachable(f"broker {where} not reachable within {startup_timeout:.0f}s")
                if waiter.done() and waiter.exception() is not None:
                    raise waiter.exception()  # type: ignore[misc]
                waiter.cancel()
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({runner, stopped, failed, incompatible}, return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                raise failed.result()  # the broker refuses us for good (credentials, TLS)
            if incompatible.done():
                raise incompatible.result()  # another model, aggregator key or federation instance
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner), 3.0)
        finally:
            failed.cancel()
            incompatible.cancel()
            stop.set()
            trainer.interrupt()  # a training in its worker thread ends at its next step
            if not runner.done():
                runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            if enrolment is not None:
                enrolment.close()
    if fatal:
        raise fatal[0]
    log.info("device %s stopped after %d rounds", config.client_id, device.stats.rounds_joined)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    try:
        v = resolve(OPTIONS, args)
        setup_logging(v["log.level"], v["log.json"])
        config, enrolment = build(v)
        module, x, y = load_model_and_data(v)
        train = TrainConfig(
            epochs=v["training.epochs"], lr=v["training.lr"], batch_size=v["training.batch_size"]
        )
        trainer = LocalTrainer(FederatedModel(module), x, y, train, loss_fn=load_loss(v))
        # The start-up deadline counts from the process start (loading torch and the data included).
        startup = v["broker.startup_timeout"]
        if startup:
            startup = max(1.0, startup - (time.monotonic() - started))
        asyncio.run(serve(config, trainer, enrolment, startup))
    except Exception as exc:
        if not logging.getLogger().handlers:
            setup_logging("INFO")
        return report_fatal(log, exc)
    return EXIT_OK


def run() -> None:
    """Console entry point: :func:`main`, then leave without the interpreter's teardown.

    Why: freeing torch's module state at interpreter exit took 3-5 s on a loaded 2-core device, after
    the device had already said goodbye to the broker; a service asked to stop should be gone at once.
    Everything that matters (MQTT session, logs, files) is closed or flushed by then.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
