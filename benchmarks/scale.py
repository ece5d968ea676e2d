"""Scale of the real path (issue 16, part 4): how many connected devices one aggregator serves.

Every run starts its own Mosquitto on a free loopback port, one aggregator process (the product's
:class:`aggregator.engine.Aggregator` in secure mode, unchanged) and several device processes, each with
hundreds of :class:`simulator.light.LightDevice` -- the device's real wire path (signed announcements,
SecAgg+ keys, sealed share bundles, masking, reveals, the 16-bit codec, one MQTT connection each) with a
synthetic delta instead of torch training. Exactly ``cohort`` devices join each round (a rotation), so
every phase closes on its count, not at a deadline.

Per configuration (connected devices n, cohort, model dimension d) it reports:

* per-phase latency (keys, shares, masked, unmask) and the whole round, medians over the rounds;
* aggregator CPU seconds per device-round (user + system of the aggregator process over the rounds,
  divided by rounds x cohort) and its peak resident memory (and its resident memory before the rounds);
* broker CPU seconds per round and peak resident memory (``/proc`` of the Mosquitto process);
* bytes per participating device per round, up and down, with the *protocol* bytes (everything but the
  masked model update: announcement, roster, neighbour keys, notices, inbox, keys, shares, reveals)
  separately; "per device round" charges the participants with every announcement the fleet received,
  "own" is what one participant itself receives in a round it takes part in.

The machine is shared (2 cores, other jobs): compare rows as ratios within one run, not across runs.

    nice -n 10 .venv/bin/python benchmarks/scale.py --json benchmarks/results/scale.json
    .venv/bin/python benchmarks/scale.py --quick --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import multiprocessing
import os
import pstats
import resource
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.partial_sums import MaskedSum, MqttSummer, ShardedMaskedSum
from aggregator.secure import PhaseWindows
from shared.chunking import DEFAULT_CHUNK_LIMIT
from shared.codec import pack
from shared.layout import ModelLayout
from shared.mqtt import MqttConfig, MqttConnection
from shared.secagg import keys
from shared.signing import load_or_create_key
from shared.snapshots import make_snapshot
from shared.wire import PHASE_CLOSED, encode
from shared.wire.secagg import MaskedInput
from simulator.broker import MosquittoBroker
from simulator.light import IN_KINDS, OUT_KINDS, LightDevice, device_key, device_name, rotation_joins

FEDERATION = "scale"
PHASES = ("keys", "shares", "masked", "unmask")
CTX = multiprocessing.get_context("fork")  # children start from this plain (loop-free) process


@dataclass(frozen=True)
class Case:
    connected: int
    cohort: int
    dim: int
    rounds: int = 2


def default_grid(quick: bool) -> list[Case]:
    if quick:
        return [Case(30, 10, 10_000, 2), Case(60, 10, 10_000, 2)]
    return [
        Case(100, 50, 10_000),
        Case(1000, 50, 10_000),
        Case(300, 100, 10_000),
        Case(1000, 300, 100_000),
        Case(300, 50, 1_000_000),
        Case(3000, 100, 10_000),
    ]


# -- device processes ---------------------------------------------------------------------------------


def _device_main(spec: dict[str, Any], queue: Any, stop: Any) -> None:
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_devices(spec, queue, stop))
    except BaseException:
        queue.put(("error", traceback.format_exc()))
        raise


async def _devices(spec: dict[str, Any], queue: Any, stop: Any) -> None:
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(spec["connected"])}
    devices = []
    async with contextlib.AsyncExitStack() as stack:
        for i in spec["indices"]:
            mqtt = MqttConfig(host="127.0.0.1", port=spec["port"], client_id=device_name(i), keepalive_s=120,
                              publish_timeout_s=120.0, connect_timeout_s=60.0)  # fmt: skip
            device = LightDevice(
                federation=FEDERATION,
                identity=device_key(i),
                aggregator_key=spec["aggregator_key"],
                directory=directory,
                mqtt=mqtt,
                dim=spec["dim"],
                joins=rotation_joins(i, spec["connected"], spec["cohort"]),
                seed=i,
                chunk_limit=spec.get("chunk_limit", DEFAULT_CHUNK_LIMIT),
            )
            devices.append(await stack.enter_async_context(device))
        await asyncio.gather(*(d.conn.wait_connected(timeout=300) for d in devices))
        queue.put(("ready", len(devices)))
        while not stop.is_set():
            await asyncio.sleep(0.2)
        stats = [asdict(d.stats) for d in devices]
    queue.put(("stats", stats))


# -- the aggregator process ---------------------------------------------------------------------------


def _aggregator_main(spec: dict[str, Any], queue: Any, go: Any) -> None:
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_aggregate(spec, queue, go))
    except BaseException:
        queue.put(("error", traceback.format_exc()))
        raise


async def _aggregate(spec: dict[str, Any], queue: Any, go: Any) -> None:
    dim, cohort = spec["dim"], spec["cohort"]
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(spec["connected"])}
    layout = ModelLayout.from_shapes([("w", [dim])])
    initial = make_snapshot(FEDERATION, 0, -1, layout, np.zeros(dim, np.float32))
    config = AggregatorConfig(
        federation=FEDERATION,
        mqtt=MqttConfig(host="127.0.0.1", port=spec["port"], client_id="aggregator", keepalive_s=120,
                        publish_timeout_s=120.0),
        store_dir=Path(spec["store"]),
        directory=directory,
        windows=PhaseWindows(keys=300, shares=300, masked=600, unmask=300),
        target_clients=cohort,
        min_clients=max(2, cohort // 2),
        over_selection=1.0,
        publish_deltas=False,
        summing_workers=spec.get("summing_workers", 0),
    )
    spans: list[dict[str, float]] = []
    async with Aggregator(config, initial=initial) as agg:
        await agg._conn.wait_connected(timeout=120)  # type: ignore[union-attr]
        queue.put(("ready", 0))
        while not go.is_set():
            await asyncio.sleep(0.05)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage.ru_utime + usage.ru_stime
        pool = agg.summing
        if pool is not None:  # summing workers connected (their CPU is counted apart)
            await pool.ready()
        workers_cpu0 = sum(_proc_cpu_s(pid) for pid in (pool.pids if pool else []))
        profiler = cProfile.Profile() if spec["profile"] else None

        async def watch() -> None:
            # The engine's open secure round says which phase it is in; note when each one starts.
            current: dict[str, float] | None = None
            round_id = -1
            while True:
                secure = agg._secure
                now = time.perf_counter()
                if secure is not None:
                    if secure.round_id != round_id:
                        round_id = secure.round_id
                        current = {"round": float(round_id), "keys": now}
                        spans.append(current)
                    if current is not None and secure.phase not in current:
                        current[secure.phase] = now
                elif current is not None and "end" not in current:
                    current["end"] = now
                await asyncio.sleep(0.02)  # phase times are good to ~20 ms

        watcher = asyncio.create_task(watch())
        if profiler is not None:
            profiler.enable()
        results = await agg.run(spec["rounds"])
        if profiler is not None:
            profiler.disable()
        await asyncio.sleep(0.01)
        watcher.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu0
        peak = usage.ru_maxrss * 1024
        workers_cpu = sum(_proc_cpu_s(pid) for pid in (pool.pids if pool else [])) - workers_cpu0
    profile_text = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        profile_text = out.getvalue()
    queue.put(("done", {
        "results": [{"round": r.round_id, "phase": r.status, "count": r.contributors, "reason": r.reason}
                    for r in results],
        "spans": spans, "cpu_s": cpu, "workers_cpu_s": workers_cpu,
        "rss_before": rss_before, "rss_peak": peak, "profile": profile_text,
    }))  # fmt: skip


# -- one case -----------------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _expect(queue: Any, kind: str, count: int, timeout: float) -> list[Any]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"waited {timeout:.0f}s for {count} {kind!r} messages, got {len(got)}")
        try:
            what, value = queue.get(timeout=min(remaining, 5.0))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
        if what == "error":
            raise RuntimeError(f"a benchmark process failed:\n{value}")
        if what == kind:
            got.append(value)
    return got


def run_case(
    case: Case, *, processes: int, profile: bool, timeout: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One configuration; ``extra`` adds to every process's spec (``summing_workers``, ``chunk_limit``)."""
    with (
        tempfile.TemporaryDirectory(prefix="fedmq-scale-") as tmp,
        MosquittoBroker(Path(tmp) / "broker") as broker,
    ):
        store = Path(tmp) / "store"
        store.mkdir()
        aggregator_key = bytes(load_or_create_key(store / "aggregator.key").verify_key)
        base = {"port": broker.port, "connected": case.connected, "cohort": case.cohort, "dim": case.dim,
                "rounds": case.rounds, "aggregator_key": aggregator_key, "store": str(store),
                "profile": profile, **(extra or {})}  # fmt: skip
        agg_queue, dev_queue = CTX.Queue(), CTX.Queue()
        go, stop = CTX.Event(), CTX.Event()
        aggregator = CTX.Process(target=_aggregator_main, args=(base, agg_queue, go), daemon=True)
        aggregator.start()
        workers = []
        share = np.array_split(np.arange(case.connected), min(processes, case.connected))
        for part in share:
            spec = {**base, "indices": [int(i) for i in part]}
            worker = CTX.Process(target=_device_main, args=(spec, dev_queue, stop), daemon=True)
            worker.start()
            workers.append(worker)
        try:
            _expect(agg_queue, "ready", 1, timeout)
            connect_started = time.perf_counter()
            _expect(dev_queue, "ready", len(workers), timeout)
            connect_s = time.perf_counter() - connect_started
            broker_cpu0 = _proc_cpu_s(broker.process.pid)  # type: ignore[union-attr]
            started = time.perf_counter()
            go.set()
            (done,) = _expect(agg_queue, "done", 1, timeout)
            wall = time.perf_counter() - started
            broker_cpu = _proc_cpu_s(broker.process.pid) - broker_cpu0  # type: ignore[union-attr]
            broker_peak = _proc_peak_rss(broker.process.pid)  # type: ignore[union-attr]
            stop.set()
            stats = [s for chunk in _expect(dev_queue, "stats", len(workers), timeout) for s in chunk]
        finally:
            stop.set()
            go.set()
            for proc in [aggregator, *workers]:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
    return summarise(case, done, stats, wall=wall, connect_s=connect_s, broker_cpu=broker_cpu,
                     broker_peak=broker_peak)  # fmt: skip


def summarise(
    case: Case, done: dict[str, Any], stats: list[dict[str, Any]], **measured: float
) -> dict[str, Any]:
    closed = [r for r in done["results"] if r["phase"] == PHASE_CLOSED]
    device_rounds = sum(r["count"] for r in closed)
    phases: dict[str, float] = {}
    for name, following in zip(PHASES, [*PHASES[1:], "end"], strict=True):
        values = [s[following] - s[name] for s in done["spans"] if name in s and following in s]
        phases[name] = statistics.median(values) if values else float("nan")
    rounds = [s["end"] - s["keys"] for s in done["spans"] if "end" in s]
    joined = sum(s["rounds_joined"] for s in stats) or 1
    bytes_in = {k: sum(s["bytes_in"][k] for s in stats) / joined for k in IN_KINDS}
    bytes_out = {k: sum(s["bytes_out"][k] for s in stats) / joined for k in OUT_KINDS}
    # A device that does not join a round still receives the round's broadcasts (announcement, roster,
    # notices): count them per connected device as well.
    idle = [s for s in stats if s["rounds_joined"] == 0]
    protocol_down = sum(v for k, v in bytes_in.items() if k != "other")
    protocol_up = sum(v for k, v in bytes_out.items() if k != "masked")
    # What one participant itself receives in a round it takes part in: every device gets every
    # announcement (the same bytes whether it joins or not), the rest only participants.
    announce_own = sum(s["bytes_in"]["announce"] for s in stats) / (case.connected * case.rounds)
    own_down = announce_own + sum(v for k, v in bytes_in.items() if k not in ("announce", "other"))
    return {
        **asdict(case),
        "closed": len(closed),
        "results": done["results"],
        "device_rounds": device_rounds,
        "round_s": statistics.median(rounds) if rounds else float("nan"),
        "phase_s": phases,
        "agg_cpu_s": done["cpu_s"],
        "agg_cpu_per_device_round_ms": 1000 * done["cpu_s"] / max(1, device_rounds),
        "workers_cpu_per_device_round_ms": 1000 * done.get("workers_cpu_s", 0.0) / max(1, device_rounds),
        "agg_rss_before_mb": done["rss_before"] / 2**20,
        "agg_rss_peak_mb": done["rss_peak"] / 2**20,
        "broker_cpu_per_round_s": measured["broker_cpu"] / max(1, case.rounds),
        "broker_rss_peak_mb": measured["broker_peak"] / 2**20,
        "connect_s": measured["connect_s"],
        "wall_s": measured["wall"],
        "bytes_in_per_device_round": bytes_in,
        "bytes_out_per_device_round": bytes_out,
        "protocol_down_per_device_round": protocol_down,
        "protocol_up_per_device_round": protocol_up,
        "protocol_down_own_per_device_round": own_down,
        "update_up_per_device_round": bytes_out["masked"],
        # The same downlink spread over every connected device and round (non-participants receive the
        # broadcast roster and notices too): what one device's link carries on average.
        "protocol_down_per_connected_round": protocol_down * joined / (case.connected * case.rounds),
        "idle_devices": len(idle),
        "faults": sum(s["faults"] for s in stats),
        "profile": done["profile"],
    }


# -- scale-out (part 5) --------------------------------------------------------------------------------


def _masked_messages(count: int, length: int, bits: int) -> tuple[list[tuple[str, bytes]], dict[str, bytes]]:
    """``count`` real masked-input messages (Ed25519-signed by enrolled keys) and the directory."""
    rng = np.random.default_rng(0)
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(count)}
    messages = []
    for i in range(count):
        vector = rng.integers(0, 1 << bits, length, dtype=np.uint32)
        unsigned = MaskedInput(FEDERATION, 0, device_name(i), pack(vector, bits), bits, length)
        signed = replace(unsigned, signature=keys.sign(device_key(i), unsigned.signed_bytes()))
        messages.append((device_name(i), encode(signed)))
    return messages, directory


def scaleout(count: int, length: int, bits: int, workers: list[int], repeats: int) -> dict[str, Any]:
    """Sum the same ``count`` signed masked inputs in this process and over worker processes.

    The inputs are real wire messages (:class:`MaskedInput`, Ed25519-signed by enrolled device keys,
    ``bits``-bit packed); each path decodes, verifies, unpacks and adds
    (:class:`aggregator.partial_sums.MaskedSum`). Timings are the best of ``repeats`` and include
    handing the bytes to the workers and combining their partial sums, not starting the processes.
    """
    messages, directory = _masked_messages(count, length, bits)
    settings = {"federation": FEDERATION, "round_id": 0, "directory": directory, "bits": bits,
                "length": length}  # fmt: skip
    single_s = float("inf")
    reference = None
    for _ in range(repeats):
        started = time.perf_counter()
        total = MaskedSum(**settings)
        for _, data in messages:
            total.add(data)
        single_s = min(single_s, time.perf_counter() - started)
        reference = total.sum & np.uint32((1 << bits) - 1)
    rows = []
    for w in workers:
        best = float("inf")
        exact = True
        for _ in range(repeats):
            with ShardedMaskedSum(workers=w, **settings) as sharded:
                started = time.perf_counter()
                for device, data in messages:
                    sharded.submit(device, data)
                combined, devices = sharded.finish()
                best = min(best, time.perf_counter() - started)
            exact = exact and bool(np.array_equal(combined, reference)) and len(devices) == count
        rows.append({"workers": w, "seconds": best, "speedup": single_s / best, "bit_exact": exact})
    return {"inputs": count, "length": length, "bits": bits, "single_s": single_s,
            "single_ms_per_input": 1000 * single_s / count, "rows": rows}  # fmt: skip


def _summer_main(
    port: int, index: int, settings: dict[str, Any], progress: Any, stop: Any, queue: Any
) -> None:
    async def main() -> None:
        total = MaskedSum(**settings)
        mqtt = MqttConfig(host="127.0.0.1", port=port, client_id=f"summer{index}", keepalive_s=120)
        summer = MqttSummer(mqtt, f"fl/{FEDERATION}/r/0/masked/+", group="sum", total=total)
        done = asyncio.Event()

        async def watch() -> None:
            seen = 0
            while not stop.is_set():
                if summer.received > seen:
                    with progress.get_lock():
                        progress.value += summer.received - seen
                    seen = summer.received
                await asyncio.sleep(0.005)
            done.set()

        watcher = asyncio.create_task(watch())
        queue.put(("ready", index))
        await summer.run(done)
        await watcher
        usage = resource.getrusage(resource.RUSAGE_SELF)
        queue.put(("partial", (total.sum.tobytes(), len(total.devices), len(summer.refused),
                               usage.ru_utime + usage.ru_stime)))  # fmt: skip

    asyncio.run(main())


def _publisher_main(port: int, index: int, messages: list[tuple[str, bytes]], go: Any, queue: Any) -> None:
    async def main() -> None:
        mqtt = MqttConfig(host="127.0.0.1", port=port, client_id=f"pub{index}", keepalive_s=120,
                          publish_timeout_s=300.0)  # fmt: skip
        async with MqttConnection(mqtt) as conn:
            await conn.wait_connected(timeout=60)
            queue.put(("ready", index))
            while not go.is_set():
                await asyncio.sleep(0.005)
            await asyncio.gather(*(conn.publish(f"fl/{FEDERATION}/r/0/masked/{device}", data)
                                   for device, data in messages))  # fmt: skip
            queue.put(("published", index))

    asyncio.run(main())


def mqtt_scaleout(count: int, length: int, bits: int, workers: list[int], timeout: float) -> dict[str, Any]:
    """The intake itself spread by the broker: ``w`` :class:`MqttSummer` processes on one shared
    subscription receive, verify, unpack and sum the same ``count`` masked inputs, published by two
    publisher processes; seconds from the first publication to the last input summed."""
    messages, directory = _masked_messages(count, length, bits)
    settings = {"federation": FEDERATION, "round_id": 0, "directory": directory, "bits": bits,
                "length": length}  # fmt: skip
    rows = []
    reference = None
    with tempfile.TemporaryDirectory(prefix="fedmq-scaleout-") as tmp, MosquittoBroker(Path(tmp)) as broker:
        for w in workers:
            queue, progress = CTX.Queue(), CTX.Value("i", 0)
            go, stop = CTX.Event(), CTX.Event()
            summers = [
                CTX.Process(target=_summer_main, args=(broker.port, i, settings, progress, stop, queue),
                            daemon=True)
                for i in range(w)
            ]
            halves = [messages[0::2], messages[1::2]]
            publishers = [CTX.Process(target=_publisher_main, args=(broker.port, i, half, go, queue),
                                      daemon=True) for i, half in enumerate(halves)]  # fmt: skip
            for proc in [*summers, *publishers]:
                proc.start()
            try:
                _expect(queue, "ready", w + len(publishers), timeout)
                time.sleep(0.5)  # the shared subscriptions are in place once connected; settle
                started = time.perf_counter()
                go.set()
                deadline = time.monotonic() + timeout
                while progress.value < count and time.monotonic() < deadline:
                    time.sleep(0.002)
                seconds = time.perf_counter() - started
                stop.set()
                partials = _expect(queue, "partial", w, timeout)
            finally:
                stop.set()
                go.set()
                for proc in [*summers, *publishers]:
                    proc.join(timeout=30)
                    if proc.is_alive():
                        proc.kill()
            total = np.zeros(length, np.uint32)
            for data, _, _, _ in partials:
                np.add(total, np.frombuffer(data, np.uint32), out=total)
            total &= np.uint32((1 << bits) - 1)
            if reference is None:
                reference = total
            rows.append({
                "workers": w, "seconds": seconds, "summed": sum(p[1] for p in partials),
                "refused": sum(p[2] for p in partials), "worker_cpu_s": sum(p[3] for p in partials),
                "bit_exact": bool(np.array_equal(total, reference)),
            })  # fmt: skip
    base = rows[0]["seconds"]
    for row in rows:
        row["speedup"] = base / row["seconds"]
    return {"inputs": count, "length": length, "bits": bits, "rows": rows}


# -- report -------------------------------------------------------------------------------------------


def kb(value: float) -> str:
    return f"{value / 1024:.1f}"


def report(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="fedmq at scale: real Mosquitto, real aggregator, light devices (secure rounds)")
    for name in ("n", "cohort", "d", "closed", "round s", "keys/shares/masked/unmask s", "agg CPU ms/dev-rnd",
                 "agg RSS MB (before/peak)", "broker CPU s/rnd", "broker RSS MB", "proto KB down/up",
                 "proto KB down own", "proto KB down per connected",
                 "update KB up"):  # fmt: skip
        table.add_column(name, justify="right")
    for r in rows:
        p = r["phase_s"]
        table.add_row(
            str(r["connected"]), str(r["cohort"]), f"{r['dim']:.0e}", f"{r['closed']}/{r['rounds']}",
            f"{r['round_s']:.2f}", "/".join(f"{p[k]:.2f}" for k in PHASES),
            f"{r['agg_cpu_per_device_round_ms']:.1f}",
            f"{r['agg_rss_before_mb']:.0f}/{r['agg_rss_peak_mb']:.0f}",
            f"{r['broker_cpu_per_round_s']:.2f}", f"{r['broker_rss_peak_mb']:.0f}",
            f"{kb(r['protocol_down_per_device_round'])}/{kb(r['protocol_up_per_device_round'])}",
            kb(r["protocol_down_own_per_device_round"]), kb(r["protocol_down_per_connected_round"]),
            kb(r["update_up_per_device_round"]),
        )  # fmt: skip
    console.print(table)


def report_scaleout(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"masked-input ingestion over worker processes ({result['inputs']} inputs of "
                        f"{result['length']:,} coordinates at {result['bits']} bits)")  # fmt: skip
    for name in ("workers", "seconds", "speedup vs 1 process", "bit-exact"):
        table.add_column(name, justify="right")
    table.add_row("1 (in process)", f"{result['single_s']:.2f}", "1.00", "reference")
    for row in result["rows"]:
        table.add_row(str(row["workers"]), f"{row['seconds']:.2f}", f"{row['speedup']:.2f}",
                      "yes" if row["bit_exact"] else "NO")  # fmt: skip
    console.print(table)


def report_mqtt_scaleout(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="the intake spread by the broker: workers on one MQTT shared subscription")
    for name in ("workers", "seconds", "speedup vs 1 worker", "summed", "worker CPU s", "bit-exact"):
        table.add_column(name, justify="right")
    for row in result["rows"]:
        table.add_row(str(row["workers"]), f"{row['seconds']:.2f}", f"{row['speedup']:.2f}",
                      f"{row['summed']}/{result['inputs']}", f"{row['worker_cpu_s']:.2f}",
                      "yes" if row["bit_exact"] else "NO")  # fmt: skip
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--quick", action="store_true", help="a small grid (tests, smoke runs)")
    parser.add_argument("--case", action="append", default=[], metavar="N:COHORT:D[:ROUNDS]",
                        help="run these cases instead of the default grid")  # fmt: skip
    parser.add_argument("--processes", type=int, default=4, help="device processes")
    parser.add_argument("--profile", action="store_true", help="cProfile the aggregator's rounds")
    parser.add_argument("--scaleout", default="300:100000:16", metavar="INPUTS:LENGTH:BITS",
                        help="the worker scale-out measurement ('' to skip)")  # fmt: skip
    parser.add_argument("--workers", default="1,2,4", help="worker counts of the scale-out")
    parser.add_argument("--timeout", type=float, default=900.0, help="deadline of each wait, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # forked processes inherit it (no per-publish chatter)
    cases = [Case(*(int(float(x)) for x in text.split(":"))) for text in args.case]
    cases = cases or default_grid(args.quick)
    console = Console(width=200)
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for case in cases:
        console.print(f"n={case.connected} cohort={case.cohort} d={case.dim} rounds={case.rounds} ...")
        try:
            row = run_case(case, processes=args.processes, profile=args.profile, timeout=args.timeout)
        except (RuntimeError, TimeoutError) as exc:  # a case the machine cannot carry: say so, go on
            console.print(f"[red]case failed[/red]: {exc}")
            failed.append({**asdict(case), "error": str(exc)[-2000:]})
            continue
        rows.append(row)
        if args.profile:
            console.print(row["profile"])
        report(console, rows)
    out = None
    if args.scaleout:
        count, length, bits = (int(float(x)) for x in args.scaleout.split(":"))
        workers = [int(w) for w in args.workers.split(",")]
        console.print(f"scale-out: {count} inputs of {length} coordinates, workers {workers} ...")
        out = scaleout(count, length, bits, workers, repeats=1 if args.quick else 3)
        report_scaleout(console, out)
        console.print("scale-out over MQTT shared subscriptions ...")
        out["mqtt"] = mqtt_scaleout(count, length, bits, workers, args.timeout)
        report_mqtt_scaleout(console, out["mqtt"])
    results = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "note": "shared 2-core machine: compare rows as ratios within one run",
        "rows": rows,
        "failed": failed,
        "scaleout": out,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=float))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
