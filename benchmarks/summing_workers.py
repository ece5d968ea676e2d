"""Summing workers through the product path: the same secure rounds with masked inputs summed in-process
(``summing_workers = 0``) and in 1 and 2 worker processes, in one run.

Each configuration is a :func:`benchmarks.scale.run_case`: its own Mosquitto, the product's aggregator
(:class:`aggregator.engine.Aggregator`, secure mode) in its own process, light devices in several
processes (the real device wire path with a synthetic delta), a rotation so every phase closes on its
count. Devices get a chunk limit above the masked input size, so every input is unchunked and goes to
the workers (``aggregator/summing.py``). Configurations alternate within a repeat (0, 1, 2, 0, 1, 2, ...)
so slow drifts of the shared machine hit them alike.

Reported per worker count (medians over the repeats): round latency and masked-phase latency, the
aggregator process's CPU per device-round (the coordinator), the workers' CPU per device-round, and
their sum; ratios against in-process within the run. The machine has 2 cores shared with the device
processes and the broker (and other jobs): the coordinator's CPU is the figure that carries over to a
bigger machine; the latency ratio is this machine's.

    nice -n 5 .venv/bin/python benchmarks/summing_workers.py --json benchmarks/results/summing_workers.json
    .venv/bin/python benchmarks/summing_workers.py --case 60:30:100000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scale import Case, run_case

KEPT = ("round_s", "phase_s", "agg_cpu_s", "agg_cpu_per_device_round_ms", "workers_cpu_per_device_round_ms",
        "agg_rss_peak_mb", "device_rounds")  # fmt: skip


def measure(case: Case, workers: list[int], repeats: int, processes: int, timeout: float) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
    for _ in range(repeats):
        for count in workers:
            extra = {"summing_workers": count, "chunk_limit": 8 * 1024 * 1024}
            row = run_case(case, processes=processes, profile=False, timeout=timeout, extra=extra)
            if row["closed"] != case.rounds:
                raise RuntimeError(
                    f"{count} workers: {row['closed']}/{case.rounds} rounds closed: {row['results']}"
                )
            runs[count].append(row)
    rows = []
    for count in workers:
        done = runs[count]

        def median(key: str, rows: list[dict[str, Any]] = done) -> float:
            return statistics.median(r[key] for r in rows)

        coordinator = median("agg_cpu_per_device_round_ms")
        summing = median("workers_cpu_per_device_round_ms")
        rows.append({
            "workers": count, "round_s": median("round_s"),
            "masked_s": statistics.median(r["phase_s"]["masked"] for r in done),
            "coordinator_cpu_ms": coordinator, "workers_cpu_ms": summing,
            "total_cpu_ms": coordinator + summing,
            "runs": [{k: r[k] for k in KEPT} for r in done],
        })  # fmt: skip
    base = rows[0]
    for row in rows:
        row["round_speedup"] = base["round_s"] / row["round_s"]
        row["masked_speedup"] = base["masked_s"] / row["masked_s"]
        row["coordinator_cpu_ratio"] = row["coordinator_cpu_ms"] / base["coordinator_cpu_ms"]
    return {"case": vars(case), "rows": rows}


def report(console: Console, result: dict[str, Any]) -> None:
    case = result["case"]
    title = f"summing workers: n={case['connected']} cohort={case['cohort']} d={case['dim']}"
    table = Table(title=title)
    columns = ("workers", "round s", "masked phase s", "masked speedup", "coordinator CPU ms/dev-round",
               "vs in-process", "workers CPU ms/dev-round", "total CPU ms/dev-round")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="right")
    for row in result["rows"]:
        table.add_row(str(row["workers"]), f"{row['round_s']:.2f}", f"{row['masked_s']:.2f}",
                      f"{row['masked_speedup']:.2f}x", f"{row['coordinator_cpu_ms']:.2f}",
                      f"{row['coordinator_cpu_ratio']:.2f}x", f"{row['workers_cpu_ms']:.2f}",
                      f"{row['total_cpu_ms']:.2f}")  # fmt: skip
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--case", default="100:50:100000:3", metavar="N:COHORT:D[:ROUNDS]")
    parser.add_argument("--workers", default="0,1,2", help="worker counts (0: in-process, the baseline)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="device processes")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    case = Case(*(int(float(x)) for x in args.case.split(":")))
    workers = [int(w) for w in args.workers.split(",")]
    console = Console(width=200)
    console.print(
        f"n={case.connected} cohort={case.cohort} d={case.dim} rounds={case.rounds}, workers {workers}"
    )
    result = measure(case, workers, args.repeats, args.processes, args.timeout)
    report(console, result)
    if args.json is not None:
        out = {
            "command": shlex.join([sys.executable, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "note": "shared 2-core machine: compare rows as ratios within one run",
            **result,
        }
        args.json.write_text(json.dumps(out, indent=2, default=float))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
