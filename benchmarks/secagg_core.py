"""Speed and memory of the SecAgg+ core (shared.secagg), without MQTT.

Measures, at n = 100 devices and d = 10^6 coordinates (b = 32, the costliest width):
device masking time and peak memory (tracemalloc), server unmask time at 0% and 10% dropout (dropouts
between the share and the mask phase, the case that costs the server pair-mask removals), PRG
throughput and the server's time as a multiple of the PRG lower bound (the time to merely expand the
masks that must be removed), the share of rounds completed at n = 100 with 10/20/30% dropout after the
share phase (graph model, crypto not modelled), and the bytes each device sends per phase.

    python benchmarks/secagg_core.py --json out.json [--length 1000000] [--devices 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import tracemalloc
from pathlib import Path

import nacl.bindings
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.secagg import SecAggClient, SecAggServer, choose_params, generate_identity, prg
from shared.secagg.graph import neighbour_graph, round_recoverable
from shared.wire.base import encode

FED = "bench"


def prg_throughput(bits: int, length: int, repeats: int) -> float:
    """Bytes a second of raw ChaCha20 expansion through our chunked path (one seed, one thread)."""
    seed = os.urandom(32)
    start = time.perf_counter()
    for _ in range(repeats):
        prg.combined_mask([seed], [], bits, 0, length)
    elapsed = time.perf_counter() - start
    return repeats * length * np.dtype(prg.mask_dtype(bits)).itemsize / elapsed


def prg_lower_bound(seeds: int, bits: int, length: int) -> float:
    """Seconds to expand ``seeds`` masks of ``length`` coordinates with bare libsodium calls."""
    size = length * np.dtype(prg.mask_dtype(bits)).itemsize
    key = os.urandom(32)
    start = time.perf_counter()
    for _ in range(seeds):
        nacl.bindings.randombytes_buf_deterministic(size, key)
    return time.perf_counter() - start


def run_round(n: int, length: int, bits: int, dropped: int, workers: int) -> dict:
    aggregator = generate_identity()
    identities = {f"dev-{i:03d}": generate_identity() for i in range(n)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    clients = {
        d: SecAggClient(FED, d, k, bytes(aggregator.verify_key), directory) for d, k in identities.items()
    }
    server = SecAggServer(FED, 1, aggregator, directory, bits, length)
    sent: dict[str, int] = {}
    for client in clients.values():
        advert = client.advertise(1)
        sent["advertise"] = len(encode(advert))
        server.add_advert(advert)
    roster = server.make_roster()
    start = time.perf_counter()
    for client in clients.values():
        bundles = client.on_roster(roster)
        sent["shares"] = sum(len(encode(b)) for b in bundles)
        for bundle in bundles:
            server.add_shares(bundle)
    share_phase_s = (time.perf_counter() - start) / n
    shared = server.close_share_phase()
    for d, client in clients.items():
        for bundle in server.shares_for(d):
            client.on_shares(bundle)
    rng = np.random.default_rng(0)
    survivors = sorted(clients)[dropped:]
    inputs_sum = np.zeros(length, dtype=np.uint64)
    device_mask_s = []
    device_peak = 0
    for i, d in enumerate(survivors):
        x = rng.integers(0, 1 << bits, length, dtype=np.uint64).astype(np.uint32)
        inputs_sum += x
        if i == 0:  # one device measured alone, single-threaded as on a small board
            tracemalloc.start()
            start = time.perf_counter()
            y = clients[d].mask(x, shared, workers=1)
            device_mask_s.append(time.perf_counter() - start)
            device_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        else:
            y = clients[d].mask(x, shared, workers=workers)
        message = clients[d].masked_input(y.astype("<u4").tobytes())
        sent["masked_input"] = len(encode(message))
        server.add_masked(message)
    survivor_list = server.close_masked_phase()
    for d in survivors:
        reveal = clients[d].on_survivors(survivor_list)
        sent["unmask_reveal"] = len(encode(reveal))
        server.add_reveal(reveal)
    start = time.perf_counter()
    plus, minus = server.mask_seeds()
    reconstruct_s = time.perf_counter() - start
    timings = {}
    for label, w, pool in (
        ("1 thread", 1, "thread"),
        (f"{workers} threads", workers, "thread"),
        (f"{workers} processes", workers, "process"),
    ):
        start = time.perf_counter()
        prg.combined_mask_parallel(plus, minus, bits, length, workers=w, pool=pool)  # type: ignore[arg-type]
        timings[label] = time.perf_counter() - start
    start = time.perf_counter()
    total = server.unmask(workers=1)
    unmask_1w = time.perf_counter() - start
    exact = bool(np.array_equal(total, (inputs_sum % (1 << bits)).astype(np.uint32)))
    lower_bound = prg_lower_bound(len(plus) + len(minus), bits, length)
    return {
        "n": n,
        "k": roster.degree,
        "t": roster.threshold,
        "dropped": dropped,
        "masks_removed": len(plus) + len(minus),
        "exact": exact,
        "server_reconstruct_s": reconstruct_s,
        "server_unmask_s_1worker": unmask_1w,
        "mask_removal_s": timings,
        "prg_lower_bound_s": lower_bound,
        "ratio_to_lower_bound_1worker": unmask_1w / lower_bound,
        "device_mask_s": device_mask_s[0],
        "device_peak_bytes": device_peak,
        "device_share_phase_s": share_phase_s,
        "bytes_sent_per_device": sent,
    }


def completion(n: int, dropout: float, rounds: int) -> float:
    params = choose_params(n)
    ids = [f"dev-{i:03d}" for i in range(n)]
    done = 0
    for seed in range(rounds):
        rng = random.Random(seed)
        graph = neighbour_graph(ids, params.k, rng.randbytes(32))
        done += round_recoverable(graph, params.t, ids, set(rng.sample(ids, n - round(dropout * n))))
    return done / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    console = Console()
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "prg_bytes_per_s": {b: prg_throughput(b, args.length, 20) for b in (8, 16, 32)},
    }
    results["rounds"] = [
        run_round(args.devices, args.length, args.bits, dropped, args.workers)
        for dropped in (0, args.devices // 10)
    ]
    results["completion_n100"] = {
        "model": "graph only (crypto not modelled): recoverable iff every survivor and every dropped "
        "device with a surviving neighbour keeps >= t surviving neighbours; 50 seeded rounds each",
        **{f"{p}%": completion(100, p / 100, 50) for p in (10, 20, 30)},
    }
    table = Table(title=f"SecAgg+ core, n={args.devices}, d={args.length}, b={args.bits}")
    table.add_column("metric")
    for r in results["rounds"]:
        table.add_column(f"{100 * r['dropped'] // r['n']}% dropout", justify="right")
    rows = [
        ("k / t", lambda r: f"{r['k']} / {r['t']}"),
        ("masks removed", lambda r: str(r["masks_removed"])),
        ("exact sum", lambda r: str(r["exact"])),
        ("device share phase (s)", lambda r: f"{r['device_share_phase_s']:.3f}"),
        ("device mask, 1 thread (s)", lambda r: f"{r['device_mask_s']:.3f}"),
        ("device peak memory (MiB)", lambda r: f"{r['device_peak_bytes'] / 2**20:.1f}"),
        ("server reconstruct (s)", lambda r: f"{r['server_reconstruct_s']:.3f}"),
        ("server unmask, 1 worker (s)", lambda r: f"{r['server_unmask_s_1worker']:.3f}"),
        *[
            (f"mask removal, {label} (s)", lambda r, label=label: f"{r['mask_removal_s'][label]:.3f}")
            for label in results["rounds"][0]["mask_removal_s"]
        ],
        ("PRG lower bound (s)", lambda r: f"{r['prg_lower_bound_s']:.3f}"),
        ("unmask / lower bound", lambda r: f"{r['ratio_to_lower_bound_1worker']:.2f}x"),
        *[
            (f"bytes sent: {phase}", lambda r, phase=phase: f"{r['bytes_sent_per_device'][phase]:,}")
            for phase in ("advertise", "shares", "masked_input", "unmask_reveal")
        ],
    ]
    for name, cell in rows:
        table.add_row(name, *[cell(r) for r in results["rounds"]])
    console.print(table)
    console.print(
        "PRG throughput (MB/s, 1 thread): "
        + ", ".join(f"b<={b}: {v / 1e6:.0f}" for b, v in results["prg_bytes_per_s"].items())
    )
    console.print(f"rounds completed at n=100 (graph model): {results['completion_n100']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
