"""``fedmq-demo``: a federated-training demo over a real MQTT broker.

Starts Mosquitto from ``broker_config/`` (or NATS with JetStream and its MQTT 3.1.1 listener, with
``--start-broker nats``) on a free loopback port, or uses ``--broker``; then an aggregator
and N simulated devices, each with its own MQTT connection, trains a small MLP on scikit-learn's
digits split non-IID across the devices, and ends with a summary table (and ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aggregator.optimizer import OPTIMIZERS, ServerOptimizerConfig
from edge_client.trainer import TrainConfig
from shared.dp import DPConfig
from shared.errors import FedmqError
from simulator.broker import MosquittoBroker
from simulator.fleet import FleetConfig, FleetReport, RoundReport, run_fleet
from simulator.nats import NatsServer
from simulator.workloads import WORKLOAD_NAMES, get_workload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedmq-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20, help="number of simulated devices")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds")
    p.add_argument("--task", choices=WORKLOAD_NAMES, default="digits-mlp", help="workload to federate")
    p.add_argument("--epochs", type=int, default=None, help="local epochs per round (default: the task's)")
    p.add_argument("--lr", type=float, default=None, help="device learning rate (default: the task's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the task's")
    p.add_argument("--window", type=float, default=30.0, help="round window (deadline) in seconds")
    p.add_argument("--min-clients", type=int, default=None, help="default: half the devices")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="fedavg", help="server optimiser")
    p.add_argument("--server-lr", type=float, default=1.0)
    p.add_argument("--plain", action="store_true", help="trusted mode: no secure aggregation (float32)")
    p.add_argument("--bits", type=int, default=16, help="secure mode: bits per uploaded coordinate")
    p.add_argument("--clip-norm", type=float, default=5.0, help="secure mode: L2 clip of each update")
    p.add_argument("--subsample", type=float, default=1.0, help="secure mode: shared-seed coordinate rate")
    p.add_argument(
        "--snapshot-encoding", choices=("f16", "q16", "q8", "f32"), default="f16", help="downlink encoding"
    )
    p.add_argument("--dp", choices=("distributed", "central"), default=None, help="differential privacy mode")
    p.add_argument("--dp-noise", type=float, default=None, help="DP noise multiplier z")
    p.add_argument("--dp-epsilon", type=float, default=None, help="DP target proven epsilon (sets z)")
    p.add_argument("--dp-delta", type=float, default=1e-3, help="DP delta (well below 1/devices)")
    p.add_argument("--dp-budget", type=float, default=None, help="stop before epsilon would exceed this")
    p.add_argument(
        "--js-devices",
        type=int,
        default=0,
        help="run this many of the devices with the JavaScript client (clients/js) over WebSockets",
    )
    p.add_argument(
        "--js-runner",
        choices=("node", "browser"),
        default="node",
        help="where JS devices run: Node, or a page of headless Chromium (browser devices)",
    )
    p.add_argument("--ws-url", default=None, help="with --broker and --js-devices: the broker's ws:// URL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--broker", default=None, help="use this broker (mqtt://host:port) instead of starting one"
    )
    p.add_argument(
        "--start-broker",
        choices=("mosquitto", "nats"),
        default="mosquitto",
        help="broker to start when --broker is not given (nats: MQTT 3.1.1 over JetStream)",
    )
    p.add_argument("--store", type=Path, default=None, help="aggregator store folder (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write the summary figures here")
    p.add_argument("--tls", action="store_true",
                   help="the started Mosquitto gets a TLS listener (a CA made for the run) for all clients")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT",
                   help="serve the aggregator's /metrics and /healthz here while it runs")  # fmt: skip
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def train_config(args: argparse.Namespace) -> TrainConfig | None:
    """The task's tuned local-training settings, with any command-line overrides."""
    overrides = {
        name: value
        for name, value in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
        if value is not None
    }
    if not overrides:
        return None
    base = get_workload(args.task, 1 if args.task == "shakespeare-lora" else args.clients, args.seed)
    return dataclasses.replace(base.train_config, **overrides)


def dp_config(args: argparse.Namespace) -> DPConfig:
    if args.dp is None:
        return DPConfig()
    if args.dp_noise is None and args.dp_epsilon is None:
        args.dp_noise = 1.0
    return DPConfig(
        mode=args.dp,
        noise_multiplier=args.dp_noise,
        target_epsilon=args.dp_epsilon if args.dp_noise is None else None,
        target_rounds=args.rounds if args.dp_noise is None else None,
        delta=args.dp_delta,
        clip_norm=args.clip_norm,
        budget_epsilon=args.dp_budget,
    ).validate()


def summary_table(report: FleetReport) -> Table:
    table = Table(title="fedmq demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("task (metric)", f"{report.task} ({report.metric})")
    table.add_row("final test metric (federated)", f"{report.final_accuracy:.4f}")
    table.add_row("central-training baseline", f"{report.central_accuracy:.4f}")
    table.add_row("gap", f"{report.central_accuracy - report.final_accuracy:+.4f}")
    table.add_row("mode", report.mode)
    if report.epsilon is not None:
        table.add_row("privacy spent (proven epsilon, delta)", f"({report.epsilon:.3f}, {report.delta:g})")
    table.add_row("rounds", str(report.rounds))
    table.add_row("clients", str(report.clients))
    table.add_row("bytes up per client per round", f"{report.bytes_up_per_client_round:,.0f}")
    table.add_row("bytes down per client per round", f"{report.bytes_down_per_client_round:,.0f}")
    table.add_row("wall time", f"{report.wall_s:.1f} s")
    for kind, stats in report.device_kinds.items():
        if len(report.device_kinds) < 2:
            break  # one kind: the rows above already say it
        table.add_row(
            f"{kind} devices: bytes up / down per round",
            f"{stats['bytes_up_per_device_round']:,.0f} / {stats['bytes_down_per_device_round']:,.0f}",
        )
        table.add_row(
            f"{kind} devices: s per round (join to reveal) / training",
            f"{stats['round_s_mean']:.2f} / {stats['train_s_mean']:.3f}",
        )
    return table


def _with_tls_listener(broker: MosquittoBroker, folder: Path) -> Callable[[MosquittoBroker], str]:
    """Give ``broker`` a second listener with TLS (a CA and server certificate made for this run, by the
    admin tool's openssl helpers); returns how to build its ``mqtts://`` URL (the CA travels in it)."""
    from fedmq_admin import pki
    from simulator.broker import free_port

    ca = pki.make_ca(folder, "fedmq-demo")
    cert, key = pki.issue(ca, "localhost", folder, "server", server_names=["localhost", "127.0.0.1"])
    port = free_port()
    broker.auth += (f"\nlistener {port} 127.0.0.1\ncafile {ca[0]}\ncertfile {cert}\nkeyfile {key}\n"
                    "tls_version tlsv1.2\n")  # fmt: skip
    return lambda _: f"mqtts://localhost:{port}?ca_file={ca[0]}"


async def _run(args: argparse.Namespace, console: Console) -> FleetReport:
    config = FleetConfig(
        clients=args.clients,
        rounds=args.rounds,
        seed=args.seed,
        task=args.task,
        train=train_config(args),
        window_s=args.window,
        min_clients=args.min_clients,
        optimizer=ServerOptimizerConfig(args.optimizer, lr=args.server_lr),
        secure=not args.plain,
        codec_bits=args.bits,
        clip_norm=args.clip_norm,
        subsample_rate=args.subsample,
        snapshot_encoding=args.snapshot_encoding,
        dp=dp_config(args),
        js_devices=args.js_devices,
        js_runner=args.js_runner,
    )
    progress = Progress(
        TextColumn("[bold]round"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("rounds", total=config.rounds, status="starting")

    def on_round(r: RoundReport) -> None:
        status = (
            f"r{r.round} {r.status}: {r.contributors}/{config.clients} devices in, "
            f"{config.clients - r.contributors} out, v{r.version}, acc {r.accuracy:.3f}"
            + (f", eps {r.epsilon:.3f}" if r.epsilon is not None else "")
        )
        if r.epsilon is not None:
            progress.console.log(f"round {r.round}: epsilon = {r.epsilon:.4f} (delta {config.dp.delta:g})")
        progress.update(task, advance=1, status=status)

    with tempfile.TemporaryDirectory(prefix="fedmq-demo-") as tmp:
        store = args.store or Path(tmp) / "aggregator"
        with progress:
            if args.broker:
                return await run_fleet(config, args.broker, store, on_round, ws_url=args.ws_url,
                                       metrics_listen=args.metrics)  # fmt: skip
            if args.start_broker == "nats":
                if args.js_devices:
                    raise FedmqError("--js-devices needs Mosquitto (its websockets listener)")
                launcher: NatsServer | MosquittoBroker = NatsServer(Path(tmp) / "broker")
            else:
                launcher = MosquittoBroker(Path(tmp) / "broker", websockets=args.js_devices > 0)
            url_of = lambda broker: broker.url  # noqa: E731
            if args.tls:
                if args.start_broker != "mosquitto" or args.js_devices:
                    raise FedmqError("--tls needs the started Mosquitto and no --js-devices")
                assert isinstance(launcher, MosquittoBroker)
                url_of = _with_tls_listener(launcher, Path(tmp) / "tls")
            with launcher as broker:
                progress.update(task, status=f"broker on {url_of(broker)}")
                ws_url = broker.ws_url if isinstance(broker, MosquittoBroker) and args.js_devices else None
                return await run_fleet(config, url_of(broker), store, on_round, ws_url=ws_url,
                                       metrics_listen=args.metrics)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    logging.basicConfig(
        level=args.log_level.upper(), handlers=[RichHandler(console=console)], format="%(message)s"
    )
    try:
        report = asyncio.run(_run(args, console))
    except FedmqError as exc:
        console.print(f"[red]fedmq-demo failed:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130
    console.print(summary_table(report))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
