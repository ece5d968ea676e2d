"""Soak: a secure federation for 20+ minutes under churn, link faults, broker and aggregator crashes.

One private Mosquitto with the *shipped* persistence settings (``simulator.chaos.ShippedMosquitto``:
autosave every 30 s, so a SIGKILL loses what changed since), the real aggregator as a subprocess (the CLI,
so it can be SIGKILLed and its memory read from ``/proc``), and ``--devices`` real edge clients in this
process, each behind its own loopback fault proxy (``simulator.faultproxy``). The run is cut into
segments, each with one kind of trouble:

``baseline``  no faults (the reference throughput);
``drops``     every device link reset every ``--drop-every`` s (jittered);
``stalls``    every device link frozen for ``--stall-s`` s, every ``--stall-every`` s;
``churn``     devices crash and come back (a fresh client with the same identity), single links flap,
              the broker is SIGKILLed and restarted every ``--broker-every`` s, and the aggregator is
              SIGKILLed and restarted once, mid-segment.

It reports rounds per minute per segment (and drops/stalls against the baseline: issue 14 asks >= 80%),
abandoned rounds by reason, contributions lost, aggregator and broker memory (RSS) over time with a plot,
and the bytes devices re-sent. A *lost contribution* is a masked input a device produced for a round that
then closed without it, although the device was up for the whole round (it may have reconnected). Memory
growth is measured per process lifetime (the broker and aggregator restart), after ``--warmup`` s, as the
mean RSS of the last fifth of the lifetime over the mean of the first fifth after warm-up.

Results go only where ``--json`` points (the plot beside it):

    nice -n 10 .venv/bin/python benchmarks/soak.py --json benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.mqtt import MqttConfig, MqttConnection
from shared.signing import load_or_create_key
from shared.snapshots import make_snapshot, write_initial
from shared.topics import Topics
from shared.wire import RoundResult, decode
from shared.wire.secagg import SurvivorList
from simulator.chaos import ShippedMosquitto
from simulator.data import dirichlet_partition, load_digits_split
from simulator.faultproxy import FaultProxy
from simulator.models import digits_mlp

log = logging.getLogger("soak")
FED = "soak"
REPO = Path(__file__).resolve().parents[1]
SEGMENTS = ("baseline", "drops", "stalls", "churn")


def rss_kib(pid: int | None) -> int | None:
    """Resident set size of a process in KiB (None if it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Observed:
    """What the monitor saw on the broker: round results and U3 notices."""

    results: dict[int, tuple[float, RoundResult]] = field(default_factory=dict)
    u3: dict[int, frozenset[str]] = field(default_factory=dict)


class Fleet:
    """The devices, each with its fault proxy; crash and revive by id."""

    def __init__(self, broker: ShippedMosquitto, keys: dict[str, nacl.signing.SigningKey], agg_key: bytes,
                 digits, workdir: Path, chunk_limit: int | None = None) -> None:  # fmt: skip
        self.broker = broker
        self.chunk_limit = chunk_limit  # a small one chunks the masked inputs (receipts then resume them)
        self.keys = keys
        self.agg_key = agg_key
        self.digits = digits
        self.directory = {cid: bytes(k.verify_key) for cid, k in keys.items()}
        self.shards = dict(zip(keys, dirichlet_partition(digits.y_train, len(keys), alpha=0.5, seed=0)))
        self.proxies: dict[str, FaultProxy] = {}
        self.devices: dict[str, EdgeClient] = {}
        self.tasks: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        #: (device, round) for every masked input a device produced, and when each device was (re)started
        #: or crashed (to tell which rounds it was up for).
        self.masked: set[tuple[str, int]] = set()
        self.up_since: dict[str, float] = {}
        self.downs: list[tuple[str, float, float]] = []  # (device, crashed at, revived at)
        self.bytes_resent = 0
        self.bytes_skipped = 0  # chunks a re-send skipped because the aggregator's receipt held them
        self.resends = 0
        self.failed_sends = 0

    async def start(self) -> None:
        for cid in self.keys:
            proxy = FaultProxy(self.broker.port)
            await proxy.start()
            self.proxies[cid] = proxy
            await self.revive(cid)

    def _client(self, cid: str) -> EdgeClient:
        shard = self.shards[cid]
        trainer = LocalTrainer(
            FederatedModel(digits_mlp()),
            torch.from_numpy(self.digits.x_train[shard]),
            torch.from_numpy(self.digits.y_train[shard]),
            TrainConfig(epochs=1, lr=0.1),
        )
        mqtt = MqttConfig.from_url(
            self.proxies[cid].url, client_id=cid, reconnect_min_s=0.1, reconnect_max_s=2.0
        )
        extra = {"chunk_limit": self.chunk_limit} if self.chunk_limit else {}
        config = EdgeConfig(FED, mqtt, self.agg_key, identity=self.keys[cid], directory=self.directory,
                            **extra)  # fmt: skip
        device = EdgeClient(config, trainer)

        def hook(phase: str, device: EdgeClient = device) -> None:
            if phase == "masked" and device.secure_round is not None:
                self.masked.add((cid, device.secure_round.round_id))

        device.phase_hook = hook
        return device

    async def revive(self, cid: str) -> None:
        device = self._client(cid)
        await device.__aenter__()
        stop = asyncio.Event()
        self.devices[cid] = device
        self.tasks[cid] = (asyncio.create_task(device.run(stop)), stop)
        now = time.time()
        if cid in self.up_since or any(d[0] == cid for d in self.downs):
            for i, (dev, crashed, revived) in enumerate(self.downs):
                if dev == cid and revived == float("inf"):
                    self.downs[i] = (dev, crashed, now)
        self.up_since[cid] = now

    async def crash(self, cid: str) -> None:
        device = self.devices.pop(cid)
        task, stop = self.tasks.pop(cid)
        self._harvest(device)
        stop.set()
        await device.crash()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        with contextlib.suppress(Exception):
            await device.__aexit__(None, None, None)
        self.downs.append((cid, time.time(), float("inf")))

    def _harvest(self, device: EdgeClient) -> None:
        stats = device.outbox.deliveries.stats
        self.bytes_resent += stats.bytes_resent
        self.bytes_skipped += stats.bytes_skipped
        self.resends += stats.resent
        self.failed_sends += stats.failed

    def was_down(self, cid: str, start: float, end: float) -> bool:
        return any(dev == cid and crashed < end and revived > start for dev, crashed, revived in self.downs)

    async def close(self) -> None:
        for cid in list(self.devices):
            device = self.devices.pop(cid)
            task, stop = self.tasks.pop(cid)
            self._harvest(device)
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
            with contextlib.suppress(Exception):
                await device.__aexit__(None, None, None)
        for proxy in self.proxies.values():
            await proxy.close()


class AggregatorProcess:
    """The aggregator CLI as a child process: start, SIGKILL, restart; same store, same key."""

    def __init__(
        self, broker_url: str, workdir: Path, directory: Path, initial: Path, n: int, masked_s: float
    ):
        self.cmd = [
            sys.executable, "-m", "aggregator", "--broker", broker_url, "--federation", FED,
            "--store", str(workdir / "agg"), "--initial", str(initial), "--directory", str(directory),
            "--mode", "secure", "--window", str(masked_s), "--min-clients", str(max(2, n - 3)),
            "--target-clients", str(n), "--snapshot-encoding", "f32", "--log-level", "WARNING",
        ]  # fmt: skip
        self.log = workdir / "aggregator.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None


async def monitor(url: str, seen: Observed, stop: asyncio.Event) -> None:
    topics = Topics(FED)
    cfg = MqttConfig.from_url(url, client_id="soak-monitor", reconnect_min_s=0.1, reconnect_max_s=1.0)
    async with MqttConnection(cfg, [topics.result, topics.notice]) as conn:
        while not stop.is_set():
            msg = await conn.next_message(timeout=0.5)
            if msg is None or not msg.payload:
                continue
            payload = bytes(msg.payload)
            with contextlib.suppress(Exception):
                if str(msg.topic) == topics.result:
                    result = decode(payload, RoundResult)
                    seen.results.setdefault(result.round_id, (time.time(), result))
                else:
                    notice = decode(payload, SurvivorList)
                    if notice.phase == "masked":
                        seen.u3[notice.round] = frozenset(notice.devices)


async def run_soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="fedmq-soak-"))
    broker = ShippedMosquitto(workdir / "broker").start()
    keys = {f"dev-{i:02d}": nacl.signing.SigningKey.generate() for i in range(args.devices)}
    directory = workdir / "directory.json"
    directory.write_text(json.dumps({cid: bytes(k.verify_key).hex() for cid, k in keys.items()}))
    model = FederatedModel(digits_mlp())
    initial = workdir / "initial.fedmq"
    write_initial(initial, make_snapshot(FED, 0, -1, model.layout, model.get_flat()))
    (workdir / "agg").mkdir()
    agg_key = bytes(load_or_create_key(workdir / "agg" / "aggregator.key").verify_key)
    aggregator = AggregatorProcess(broker.url, workdir, directory, initial, args.devices, args.masked_s)
    aggregator.start()
    fleet = Fleet(broker, keys, agg_key, load_digits_split(seed=0), workdir, args.chunk_limit)
    await fleet.start()
    seen = Observed()
    stop = asyncio.Event()
    watcher = asyncio.create_task(monitor(broker.url, seen, stop))
    samples: list[dict[str, float | None]] = []
    events: list[tuple[float, str]] = []
    segments: list[tuple[str, float, float]] = []
    t0 = time.time()

    def broker_pid() -> int | None:
        process = broker.process
        return process.pid if process is not None and process.poll() is None else None

    async def sample() -> None:
        while not stop.is_set():
            samples.append({
                "t": time.time() - t0,
                "aggregator_rss_kib": rss_kib(aggregator.pid),
                "broker_rss_kib": rss_kib(broker_pid()),
                "aggregator_pid": aggregator.pid,
                "broker_pid": broker_pid(),
            })  # fmt: skip
            await asyncio.sleep(args.sample_every)

    sampler = asyncio.create_task(sample())

    def event(what: str) -> None:
        events.append((time.time() - t0, what))
        log.info("t=%.0fs %s", time.time() - t0, what)

    async def restart_broker() -> None:
        broker.kill()
        event("broker SIGKILL")
        await asyncio.sleep(1.0)
        broker.start()

    seconds = {name: args.minutes * 60 * share for name, share in zip(SEGMENTS, args.split, strict=True)}
    try:
        for name in SEGMENTS:
            start = time.time()
            end = start + seconds[name]
            event(f"segment {name} starts")
            next_drop = start + rng.uniform(0.5, 1.5) * args.drop_every
            next_stall = start + args.stall_every
            next_broker = start + args.broker_every / 2
            next_churn = start + args.churn_every
            next_flap = start + args.flap_every
            aggregator_restarted = False
            while time.time() < end:
                now = time.time()
                if name == "drops" and now >= next_drop:
                    dropped = sum(p.drop() for p in fleet.proxies.values())
                    event(f"drop {dropped} links")
                    next_drop = now + rng.uniform(0.5, 1.5) * args.drop_every
                if name == "stalls" and now >= next_stall:
                    for proxy in fleet.proxies.values():
                        asyncio.get_running_loop().create_task(proxy.stall(args.stall_s))
                    event(f"stall all links {args.stall_s:.0f}s")
                    next_stall = now + args.stall_every
                if name == "churn":
                    if now >= next_broker:
                        await restart_broker()
                        next_broker = now + args.broker_every
                    if not aggregator_restarted and now >= start + seconds[name] / 2:
                        aggregator.kill()
                        event("aggregator SIGKILL")
                        await asyncio.sleep(1.0)
                        aggregator.start()
                        aggregator.restarts += 1
                        aggregator_restarted = True
                    if now >= next_churn:
                        online = sorted(fleet.devices)
                        offline = sorted(set(keys) - set(online))
                        if offline and (len(online) <= args.devices - 2 or rng.random() < 0.5):
                            cid = rng.choice(offline)
                            await fleet.revive(cid)
                            event(f"{cid} joins")
                        else:
                            cid = rng.choice(online)
                            await fleet.crash(cid)
                            event(f"{cid} leaves")
                        next_churn = now + rng.uniform(0.5, 1.5) * args.churn_every
                    if now >= next_flap and fleet.devices:
                        cid = rng.choice(sorted(fleet.devices))
                        fleet.proxies[cid].drop()
                        event(f"{cid} link flap")
                        next_flap = now + rng.uniform(0.5, 1.5) * args.flap_every
                if aggregator.process is not None and aggregator.process.poll() is not None:
                    event(f"aggregator exited with {aggregator.process.returncode}; restarting")
                    aggregator.start()
                    aggregator.restarts += 1
                await asyncio.sleep(0.2)
            segments.append((name, start - t0, time.time() - t0))
    finally:
        stop.set()
        await asyncio.gather(watcher, sampler, return_exceptions=True)
        await fleet.close()
        aggregator.kill()
        broker.close()
    return summarise(args, seen, fleet, samples, events, segments, t0, aggregator.restarts)


def growth(samples: list[dict], key: str, pid_key: str, warmup: float) -> list[dict[str, float]]:
    """Per process lifetime (>= 3 minutes after warm-up): mean RSS of its last fifth / first fifth - 1."""
    lifetimes: dict[int, list[tuple[float, float]]] = {}
    for s in samples:
        if s[key] is not None and s[pid_key] is not None:
            lifetimes.setdefault(int(s[pid_key]), []).append((float(s["t"]), float(s[key])))
    out = []
    for pid, points in lifetimes.items():
        start = points[0][0] + warmup
        steady = [v for t, v in points if t >= start]
        if len(steady) < 10 or points[-1][0] - start < 180:
            continue
        fifth = max(1, len(steady) // 5)
        first, last = sum(steady[:fifth]) / fifth, sum(steady[-fifth:]) / fifth
        out.append({"pid": pid, "from_s": start, "to_s": points[-1][0], "first_kib": first, "last_kib": last,
                    "growth": last / first - 1})  # fmt: skip
    return out


def summarise(
    args, seen: Observed, fleet: Fleet, samples, events, segments, t0: float, restarts: int
) -> dict:
    rows = []
    by_reason: Counter[str] = Counter()
    lost: list[tuple[str, int]] = []
    abandoned_inputs = 0
    for name, start, end in segments:
        ended = [(t - t0, r) for t, r in seen.results.values() if start <= t - t0 < end]
        closed = [r for _, r in ended if r.status == "closed"]
        minutes = (end - start) / 60
        rows.append({"segment": name, "minutes": minutes, "rounds_closed": len(closed),
                     "rounds_abandoned": len(ended) - len(closed),
                     "rounds_per_min": len(closed) / minutes if minutes else 0.0})  # fmt: skip
    ordered = sorted(seen.results.items())
    for i, (round_id, (t_end, result)) in enumerate(ordered):
        t_start = ordered[i - 1][1][0] if i else t0
        if result.status != "closed":
            by_reason[reason_class(result.reason)] += 1
            abandoned_inputs += sum(1 for cid, r in fleet.masked if r == round_id)
            continue
        u3 = seen.u3.get(round_id, frozenset())
        for cid, r in sorted(fleet.masked):
            if r == round_id and cid not in u3 and not fleet.was_down(cid, t_start, t_end):
                lost.append((cid, r))
    baseline = next(r["rounds_per_min"] for r in rows if r["segment"] == "baseline")
    for row in rows:
        row["vs_baseline"] = row["rounds_per_min"] / baseline if baseline else None
    agg_growth = growth(samples, "aggregator_rss_kib", "aggregator_pid", args.warmup)
    broker_growth = growth(samples, "broker_rss_kib", "broker_pid", args.warmup)
    return {
        "benchmark": "soak",
        "command": shlex.join([".venv/bin/python", *sys.argv]),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "wall_minutes": (segments[-1][2] if segments else 0) / 60,
        "segments": rows,
        "rounds_total": len(seen.results),
        "abandoned_by_reason": dict(by_reason),
        "masked_inputs_produced": len(fleet.masked),
        "masked_inputs_in_abandoned_rounds": abandoned_inputs,
        "contributions_lost": len(lost),
        "lost": lost[:50],
        "bytes_resent": fleet.bytes_resent,
        "bytes_skipped_by_receipts": fleet.bytes_skipped,
        "resends": fleet.resends,
        "failed_publishes_kept": fleet.failed_sends,
        "aggregator_restarts": restarts,
        "memory_growth": {"aggregator": agg_growth, "broker": broker_growth},
        "events": events,
        "samples": samples,
        "segment_times": segments,
    }


def reason_class(reason: str) -> str:
    """A coarse label for an abandon reason (the numbers in it vary)."""
    for key, label in (
        ("restarted", "aggregator restarted mid-round"),
        ("advertised keys", "too few key adverts"),
        ("shared", "too few devices shared"),
        ("cannot be unmasked", "unmask infeasible"),
        ("too few reveals", "too few reveals"),
        ("min_clients", "below min_clients"),
    ):
        if key in reason:
            return label
    return reason[:60] or "unknown"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for key, label in (("aggregator_rss_kib", "aggregator RSS"), ("broker_rss_kib", "broker RSS")):
        pts = [(s["t"] / 60, s[key] / 1024) for s in samples if s[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", markersize=2, label=label)
    for name, start, end in result["segment_times"]:
        ax.axvspan(start / 60, end / 60, alpha=0.08, color={"baseline": "g", "drops": "b", "stalls": "y",
                                                            "churn": "r"}[name])  # fmt: skip
        ax.text(start / 60, ax.get_ylim()[1] * 0.95, name, fontsize=8)
    for t, what in result["events"]:
        if "SIGKILL" in what:
            ax.axvline(t / 60, color="k", linewidth=0.5, alpha=0.4)
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_title("soak: memory over time (vertical lines: broker/aggregator SIGKILL)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(result: dict) -> None:
    print(f"{'segment':<9} {'min':>5} {'closed':>7} {'abandoned':>9} {'rounds/min':>10} {'vs baseline':>11}")
    for row in result["segments"]:
        vs = f"{row['vs_baseline']:.2f}" if row["vs_baseline"] is not None else "-"
        print(f"{row['segment']:<9} {row['minutes']:>5.1f} {row['rounds_closed']:>7} "
              f"{row['rounds_abandoned']:>9} {row['rounds_per_min']:>10.1f} {vs:>11}")  # fmt: skip
    print(f"abandoned by reason: {result['abandoned_by_reason']}")
    print(f"contributions lost: {result['contributions_lost']} of {result['masked_inputs_produced']} masked "
          f"inputs ({result['masked_inputs_in_abandoned_rounds']} in abandoned rounds)")  # fmt: skip
    print(f"re-sent: {result['resends']} messages, {result['bytes_resent']} B (receipts saved "
          f"{result.get('bytes_skipped_by_receipts', 0)} B); aggregator restarts "
          f"{result['aggregator_restarts']}")  # fmt: skip
    for who, rows in result["memory_growth"].items():
        for row in rows:
            first, last = row["first_kib"] / 1024, row["last_kib"] / 1024
            span = (row["to_s"] - row["from_s"]) / 60
            print(f"{who} pid {row['pid']}: RSS {first:.1f} -> {last:.1f} MiB ({100 * row['growth']:+.1f}%) "
                  f"over {span:.1f} min")  # fmt: skip
    print(f"reproduce: {result['command']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the results here (and the plot beside it)")
    p.add_argument("--minutes", type=float, default=22.0)
    p.add_argument("--split", type=float, nargs=4, default=[0.18, 0.18, 0.18, 0.46],
                   help="shares of the run for baseline, drops, stalls, churn")  # fmt: skip
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--masked-s", type=float, default=15.0, help="masked-phase window")
    p.add_argument("--drop-every", type=float, default=6.0)
    p.add_argument("--stall-every", type=float, default=24.0, help="seconds between stalls")
    p.add_argument("--stall-s", type=float, default=4.0)
    p.add_argument("--broker-every", type=float, default=180.0)
    p.add_argument("--churn-every", type=float, default=30.0)
    p.add_argument("--flap-every", type=float, default=10.0)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-limit", type=int, default=None,
                   help="devices' chunk limit, bytes (>= 1024; default 256 KiB: a masked input is one frame)")
    args = p.parse_args()
    # The library's own warnings (every fault logs some) would drown the table: errors only, plus ours.
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shared.mqtt.paho").setLevel(logging.CRITICAL)
    log.setLevel(logging.INFO)
    result = asyncio.run(run_soak(args))
    print_table(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
        plot(result, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
