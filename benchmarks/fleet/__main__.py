"""Entry point: ``python -m benchmarks.fleet --json PATH`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console

from benchmarks.fleet import sim
from benchmarks.fleet.methods import memory_for
from benchmarks.fleet.real import real_mqtt
from benchmarks.fleet.report import _json_default, _mean_payload, _overheads, plot, report, targets
from benchmarks.fleet.runner import Run, run_all
from benchmarks.fleet.sim import (
    BUDGET_FRACTION,
    HORIZON_S,
    MAX_SHARDS,
    TARGET_ACCURACY,
    TASK,
    Availability,
    TimeModel,
    ablation,
    default_methods,
    float32_update_bytes,
    override,
)
from simulator.workloads import get_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json",
        type=Path,
        help="write the results here, plots beside it (without it nothing is written)",
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
        "--contributions", type=int, help=f"contribution budget per run (default {sim.CONTRIBUTION_BUDGET})"
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
    sim.CONTRIBUTION_BUDGET = args.contributions or (1200 if args.quick else sim.CONTRIBUTION_BUDGET)
    tm, availability = TimeModel(), Availability()
    methods = [
        override(m, args.fedmq) if m.kind == "fedmq" else m for m in default_methods(args.budget_fraction)
    ]
    fedmq = next(m for m in methods if m.kind == "fedmq")
    everything = [*methods, ablation(fedmq)]
    runs = [
        Run(n, s, method, args.seed, sim.CONTRIBUTION_BUDGET)
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
    out: Path | None = args.json
    plots = [] if out is None else plot(rows, real, TARGET_ACCURACY, out.parent / out.stem)
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
            "contribution_budget": sim.CONTRIBUTION_BUDGET,
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
        "reproduce": ".venv/bin/python -m benchmarks.fleet " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "platform": platform.platform(),
        "wall_s": time.perf_counter() - started,
    }
    report(console, results)
    text = json.dumps(results, indent=2, default=_json_default)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"results: {out}, plots: {', '.join(plots)}")


if __name__ == "__main__":
    main()
