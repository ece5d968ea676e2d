"""JavaScript device vs Python device on the demo task: bytes and seconds per round, side by side.

Runs the demo federation (``simulator.fleet.run_fleet``: digits-mlp, secure aggregation, 16-bit codec,
f16 snapshots, a real Mosquitto with a websockets listener) once per JS runner, with the last
``--js-devices`` devices run by ``clients/js`` (in Node, or in a page of headless Chromium) and the rest by
the Python client. Per kind of device it reports the payload bytes each device sent and received per round
(every MQTT payload: snapshots, deltas, round messages, presence), the mean seconds from joining a round
(advert sent) to sending the reveal, and the mean local training time.

    .venv/bin/python benchmarks/js_device.py --json benchmarks/results/js_device.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.broker import MosquittoBroker
from simulator.fleet import FleetConfig, run_fleet

log = logging.getLogger("benchmarks.js_device")


async def one_run(args: argparse.Namespace, runner: str) -> dict[str, object]:
    config = FleetConfig(
        clients=args.clients,
        rounds=args.rounds,
        seed=args.seed,
        window_s=args.window,
        js_devices=args.js_devices,
        js_runner=runner,
    )
    with tempfile.TemporaryDirectory(prefix="fedmq-js-bench-") as tmp:
        with MosquittoBroker(Path(tmp) / "broker", websockets=True) as broker:
            report = await run_fleet(config, broker.url, Path(tmp) / "aggregator", ws_url=broker.ws_url)
    return {
        "runner": runner,
        "clients": args.clients,
        "js_devices": args.js_devices,
        "rounds": report.rounds,
        "closed_rounds": sum(1 for r in report.per_round if r.status == "closed"),
        "final_accuracy": report.final_accuracy,
        "wall_s": report.wall_s,
        "device_kinds": report.device_kinds,
    }


def table(runs: list[dict[str, object]]) -> Table:
    out = Table(title="JS vs Python device on the demo task (per device, per round)")
    for column in (
        "run",
        "device",
        "devices",
        "bytes up",
        "bytes down",
        "s join->reveal",
        "s training",
        "rounds in",
    ):
        out.add_column(column, justify="right" if column not in ("run", "device") else "left")
    for run in runs:
        for kind, s in run["device_kinds"].items():
            out.add_row(
                f"{run['runner']} ({run['closed_rounds']}/{run['rounds']} closed)",
                kind,
                str(s["devices"]),
                f"{s['bytes_up_per_device_round']:,.0f}",
                f"{s['bytes_down_per_device_round']:,.0f}",
                f"{s['round_s_mean']:.2f}",
                f"{s['train_s_mean']:.3f}",
                str(s["contributions"]),
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--js-devices", type=int, default=2)
    p.add_argument("--runners", default="node,browser", help="comma-separated: node, browser")
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    runs = [asyncio.run(one_run(args, runner)) for runner in args.runners.split(",")]
    Console(width=130).print(table(runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": shlex.join(
                        [".venv/bin/python", "benchmarks/js_device.py", *(argv or sys.argv[1:])]
                    ),
                    "machine": {"python": platform.python_version(), "platform": platform.platform()},
                    "runs": runs,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
