"""``fedmq-aggregator`` / ``python -m aggregator``: run the round engine as a service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aggregator.config import MODES, AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.optimizer import OPTIMIZERS, ServerOptimizerConfig
from aggregator.secure import PhaseWindows
from shared.codec import CodecConfig
from shared.errors import FedmqError
from shared.mqtt import MqttConfig
from shared.signing import read_directory

log = logging.getLogger("aggregator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedmq-aggregator", description="fedmq aggregator (round engine)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt[s]://[user:pass@]host:port")
    p.add_argument("--federation", default="demo")
    p.add_argument("--client-id", default="aggregator")
    p.add_argument("--store", type=Path, required=True, help="folder for the journal and snapshots")
    p.add_argument("--initial", type=Path, default=None, help="initial snapshot file (first start only)")
    p.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: run on)")
    p.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="round window in seconds (secure mode: the masked-input phase)",
    )
    p.add_argument("--min-clients", type=int, default=2)
    p.add_argument("--target-clients", type=int, default=10)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="fedavg")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--mode", choices=MODES, default="secure", help="secure aggregation, or plain (trusted)")
    p.add_argument(
        "--directory",
        type=Path,
        default=None,
        help="JSON map of enrolled device id -> hex Ed25519 public key (required in secure mode)",
    )
    p.add_argument("--bits", type=int, default=16, help="secure mode: bits per coordinate")
    p.add_argument("--clip-norm", type=float, default=5.0, help="secure mode: L2 clip of each update")
    p.add_argument(
        "--snapshot-encoding", choices=("f16", "q16", "q8", "f32"), default="f16", help="downlink encoding"
    )
    p.add_argument("--enrolled", type=Path, default=None, help="plain mode: file with one device id per line")
    p.add_argument("--ca-file", default=None)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> AggregatorConfig:
    enrolled = None
    if args.enrolled is not None:
        enrolled = frozenset(line.strip() for line in args.enrolled.read_text().splitlines() if line.strip())
    extra = {"ca_file": args.ca_file} if args.ca_file else {}
    directory = read_directory(args.directory) if args.directory is not None else None
    return AggregatorConfig(
        federation=args.federation,
        mqtt=MqttConfig.from_url(args.broker, client_id=args.client_id, **extra),
        store_dir=args.store,
        round_window_s=args.window,
        windows=PhaseWindows(masked=args.window),
        min_clients=args.min_clients,
        target_clients=args.target_clients,
        optimizer=ServerOptimizerConfig(args.optimizer, lr=args.server_lr),
        enrolled=enrolled,
        mode=args.mode,
        snapshot_encoding=args.snapshot_encoding,
        directory=directory,
        codec=CodecConfig(bits=args.bits, clip_norm=args.clip_norm, expected_clients=1, seed=bytes(32)),
    )


async def serve(config: AggregatorConfig, initial: Path | None, rounds: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Aggregator(config, initial=initial) as aggregator:
        results = await aggregator.run(rounds, stop)
    closed = sum(r.status == "closed" for r in results)
    log.info("stopped after %d rounds (%d closed); model at v%d", len(results), closed, aggregator.version)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(build_config(args), args.initial, args.rounds))
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
