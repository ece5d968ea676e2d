"""The unit of work (one fleet size, straggler fraction and method) and the process pool that runs them."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import Progress

from benchmarks.fleet import sim
from benchmarks.fleet.methods import run_method
from benchmarks.fleet.report import summarise
from benchmarks.fleet.sim import (
    HORIZON_S,
    MAX_SHARDS,
    TARGET_ACCURACY,
    TASK,
    Availability,
    Method,
    TimeModel,
)
from simulator.workloads import get_workload


@dataclass(frozen=True)
class Run:
    """One (fleet size, straggler fraction, method) simulation: the unit a worker process runs."""

    devices: int
    stragglers: float
    method: Method
    seed: int
    contributions: int


def run_one(run: Run) -> dict:
    """Simulate ``run`` and summarise it (in a worker process: everything it needs is rebuilt here)."""
    sim.CONTRIBUTION_BUDGET = run.contributions
    torch.set_num_threads(1)
    workload = get_workload(TASK, min(run.devices, MAX_SHARDS), seed=run.seed)
    t0 = time.perf_counter()
    trace = run_method(
        workload, run.method, run.devices, run.stragglers, Availability(), TimeModel(), HORIZON_S, run.seed
    )
    return {
        "devices": run.devices,
        "stragglers": run.stragglers,
        **summarise(trace, TARGET_ACCURACY),
        "sim_wall_s": time.perf_counter() - t0,
        "block_sets_raw": trace.block_sets,
        "roster_sizes": trace.roster_sizes,
    }


def run_all(runs: list[Run], jobs: int, console: Console) -> list[dict]:
    """Every run, on ``jobs`` processes (each simulation is sequential and single-threaded); rows come
    back in ``runs`` order whatever order they finish in."""
    rows: list[dict | None] = [None] * len(runs)
    with Progress(console=console) as progress:
        bar = progress.add_task("fleet simulations", total=len(runs))

        def done(i: int, row: dict) -> None:
            rows[i] = row
            progress.advance(bar)
            progress.console.print(
                f"  {row['devices']} devices, {row['stragglers']:.0%} stragglers, {row['method']}: final "
                f"{row['final_accuracy']:.3f}, to {TARGET_ACCURACY}: {row['time_to_target_s']}, "
                f"{row['sim_wall_s']:.1f}s"
            )

        if jobs <= 1:
            for i, run in enumerate(runs):
                done(i, run_one(run))
        else:
            # spawn, not fork: forking a process that has used torch's thread pools can hang
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(run_one, run): i for i, run in enumerate(runs)}
                for future in as_completed(futures):
                    done(futures[future], future.result())
    return [row for row in rows if row is not None]
