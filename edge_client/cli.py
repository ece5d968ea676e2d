"""``fedmq-edge`` / ``python -m edge_client``: run one device.

The model and data come either from a simulator workload (``--task digits --shard i --shards n``,
handy for docker-compose and demos) or from your own code: ``--model pkg.module:factory`` returning an
``nn.Module`` and ``--data file.npz`` holding arrays ``x`` and ``y``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError, FedmqError
from shared.mqtt import MqttConfig
from shared.signing import load_or_create_key, read_directory

log = logging.getLogger("edge_client")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedmq-edge", description="fedmq edge device")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--federation", default="demo")
    p.add_argument("--client-id", required=True)
    p.add_argument("--aggregator-key", default=None, help="hex Ed25519 public key of the aggregator")
    p.add_argument("--task", default=None, help="simulator workload (digits)")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--model", default=None, help="module:factory returning an nn.Module")
    p.add_argument("--data", type=Path, default=None, help=".npz with arrays x and y")
    p.add_argument(
        "--identity", type=Path, default=None, help="secure mode: Ed25519 seed file (created if missing)"
    )
    p.add_argument(
        "--directory", type=Path, default=None, help="secure mode: JSON {device id: hex public key}"
    )
    p.add_argument(
        "--memory-budget",
        type=int,
        default=None,
        help="bytes for local training: weights, gradients, optimizer state, activations (partial training)",
    )
    p.add_argument(
        "--no-train-ahead",
        dest="train_ahead",
        action="store_false",
        help="secure rounds: join even when the last training took longer than the masked window",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


#: ``--task`` names: (model factory, shard loader ``(shard, shards) -> (x, y)``) as ``module:attr``
#: references, resolved only when asked for, so the device package never imports the simulator.
TASKS = {"digits": ("simulator.models:digits_mlp", "simulator.data:digits_shard")}


def _resolve(reference: str) -> Any:
    module_name, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def load_model_and_data(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    if args.task in TASKS:
        model_ref, data_ref = TASKS[args.task]
        x, y = _resolve(data_ref)(args.shard, args.shards)
        return _resolve(model_ref)(), torch.from_numpy(x), torch.from_numpy(y)
    if args.model and args.data:
        arrays = np.load(args.data)
        return _resolve(args.model)(), torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    raise ConfigError("task", "give --task digits, or --model and --data")


async def serve(config: EdgeConfig, trainer: LocalTrainer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeClient(config, trainer) as device:
        await device.run(stop)
    log.info("device %s stopped after %d rounds", config.client_id, device.stats.rounds_joined)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        module, x, y = load_model_and_data(args)
        trainer = LocalTrainer(FederatedModel(module), x, y, TrainConfig(epochs=args.epochs, lr=args.lr))
        key = bytes.fromhex(args.aggregator_key) if args.aggregator_key else None
        identity = load_or_create_key(args.identity) if args.identity else None
        directory = read_directory(args.directory) if args.directory is not None else None
        config = EdgeConfig(
            federation=args.federation,
            mqtt=MqttConfig.from_url(args.broker, client_id=args.client_id),
            aggregator_key=key,
            identity=identity,
            directory=directory,
            memory_budget=args.memory_budget,
            train_ahead=args.train_ahead,
        )
        asyncio.run(serve(config, trainer))
    except FedmqError as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # a bug: the traceback for the report, then one line with the cause
        log.error("unexpected error", exc_info=exc)
        log.critical("fatal: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
