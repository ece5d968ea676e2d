"""One rogue enrolled device per attack class against the aggregator's secure round, beside honest devices.

For each attack class (and a no-attack baseline in the same run) this runs ``--rounds`` secure rounds of
``--devices`` honest devices plus one rogue through the aggregator's real round driver and intake
(:class:`aggregator.secure.SecureRound`: wire decoding with its budget, per-owner reassembly, the SecAgg+
core, offences and quarantine; in front of it the engine's per-sender rate limit), with the devices'
real protocol side (:class:`edge_client.secure.SecureParticipation`, SecAgg+ client, codec) on random
deltas instead of training. Everything publishes through the product's :class:`shared.outbox.Outbox`
over an in-process loopback instead of a broker: the broker-side classes (identity takeover, retained
messages) are covered by ``tests/adversarial/test_broker_identity.py``. Each class runs in its own child
process, so its peak RSS and CPU time are its own.

Per class it reports: rounds closed, rounds closed with the *exact* sum of the surviving inputs (checked
against the devices' own encodings), whether the rogue was named (offence counter), the aggregator
process's CPU seconds per round and peak RSS, and the event loop's worst lag (a 10 ms ticker). Targets
(issue 13): >= 99% of rounds exact, loop lag <= 0.5 s, memory <= 1.5x the baseline.

    python -m benchmarks.adversarial --json benchmarks/results/adversarial.json
    python -m benchmarks.adversarial --rounds 10 --classes none,corrupt-reveal   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import nacl.utils
import numpy as np

from aggregator import rounds
from aggregator.config import AggregatorConfig
from aggregator.hunt import BEYOND_CLIP as BEYOND_CLIP_RULE
from aggregator.hunt import Hunt
from aggregator.secure import PhaseWindows, SecureRound
from edge_client.secure import SecureParticipation
from edge_client.trainer import TrainResult
from shared.codec import CodecConfig, UpdateDecoder
from shared.errors import FedmqError
from shared.mqtt import MqttConfig
from shared.offences import Offences
from shared.outbox import Outbox
from shared.ratelimit import SenderLimits
from shared.secagg import SecAggClient, generate_identity, keys, shamir
from shared.topics import Topics
from shared.wire import Chunk, Message, RoundAnnounce, decode, encode
from shared.wire.secagg import UnmaskReveal

FED = "bench"
MAX_BYTES = 8 * 1024 * 1024  # the aggregator's max_update_bytes in this benchmark
ROGUE = "dev-rogue"
CLASSES = {
    "none": "no attack (baseline)",
    "garbage-bundles": "random bytes in every share bundle",
    "rewrapped-bundles": "valid bundles re-addressed to other neighbours",
    "inconsistent-shares": "Shamir shares off one polynomial, digests published for them",
    "corrupt-reveal": "random shares in its unmask reveal",
    "weak-key": "all-zero (low-order) X25519 mask key in its signed advert",
    "decoder-bomb": "50 payloads of 1.35 million empty msgpack arrays, then deep nesting, every round",
    "chunk-flood": "5,000 chunks of fresh transfers (zero-byte ones too)",
    "message-flood": "10,000 malformed messages",
    "weight-lie": "claims weight 1 (10^6 examples) against honest 0.13",
    "beyond-clip": "its encoding multiplied by 40 before masking (an update far beyond the clip)",
    "beyond-clip-sometimes": "beyond-clip in 30% of the rounds it joins (adaptive), honest otherwise",
    "beyond-clip-dropouts": "beyond-clip while each honest device misses 15% of the rounds",
}
#: Beyond-clip variants: the rogue's chance to attack in a round it joins, honest devices' chance to miss it.
BEYOND_CLIP = {
    "beyond-clip": (1.0, 0.0),
    "beyond-clip-sometimes": (0.3, 0.0),
    "beyond-clip-dropouts": (1.0, 0.15),
}


def _result(dim: int, examples: int, rng: np.random.Generator) -> TrainResult:
    return TrainResult(rng.normal(scale=0.05, size=dim).astype(np.float32), examples, 0.0, 0.0)


class Rogue(SecAggClient):
    """A SecAgg+ client that deals inconsistent shares (only this instance: the module split is patched
    around its own roster step)."""

    def on_roster(self, roster):  # type: ignore[no-untyped-def]
        return self._inconsistent(lambda: super(Rogue, self).on_roster(roster))

    def on_compact_roster(self, roster, neighbour_keys):  # type: ignore[no-untyped-def]
        return self._inconsistent(lambda: super(Rogue, self).on_compact_roster(roster, neighbour_keys))

    def _inconsistent(self, deal):  # type: ignore[no-untyped-def]
        original = shamir.split

        def inconsistent(secret: bytes, threshold: int, holders: int) -> list[bytes]:
            shares = original(secret, threshold, holders)
            return [nacl.utils.random(shamir.SHARE_BYTES) if i else s for i, s in enumerate(shares)]

        shamir.split = inconsistent
        try:
            return deal()
        finally:
            shamir.split = original


class Loopback:
    """An in-process broker stand-in behind the product's :class:`shared.outbox.Outbox`: device round
    frames go to the aggregator's intake; roster, notices and inboxes go to the devices."""

    def __init__(self, topics: Topics, feed: Callable[[str, bytes], None]) -> None:
        self.topics = topics
        self.feed = feed
        self.parts: dict[str, SecureParticipation] = {}
        self.tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(_quietly(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, expiry_s: float | None = None
    ) -> None:
        if topic.startswith(f"{self.topics.prefix}/r/"):
            self.feed(topic, payload)
        elif topic == self.topics.roster:
            roster = decode(payload)
            for part in self.parts.values():
                self.spawn(part.on_roster(roster))
        elif topic == self.topics.notice:
            notice = decode(payload)
            for part in self.parts.values():
                self.spawn(part.on_notice(notice))
        elif topic.startswith(f"{self.topics.prefix}/inbox/"):
            device = topic.rsplit("/", 1)[-1]
            if device in self.parts:
                self.spawn(self.parts[device].on_inbox(decode(payload)))
        await asyncio.sleep(0)


class _Rogue(Outbox):
    """The rogue's outbox: tampers with each of its messages on the way out."""

    def __init__(self, transport: Loopback, topics: Topics, attack: str, identity) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, topics)
        self.attack = attack
        self.identity = identity

    async def round_message(  # type: ignore[override]
        self, round_id: int, kind: str, sender: str, message: Message, *, expiry_s: float
    ) -> int:
        tampered = _tamper(self.attack, kind, message, self.identity)
        return await super().round_message(round_id, kind, sender, tampered, expiry_s=expiry_s)


async def _one_round(
    attack: str,
    round_id: int,
    *,
    devices: int,
    dim: int,
    identities: dict,
    aggregator,
    offences: Offences,
    limits: SenderLimits,
    rng: np.random.Generator,
    hunt: Hunt,
) -> dict:
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    topics = Topics(FED)
    config = AggregatorConfig(
        federation=FED,
        mqtt=MqttConfig(client_id="aggregator"),
        store_dir=Path("unused"),
        directory=directory,
        codec=CodecConfig(bits=16, clip_norm=1.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=0.5, shares=2.0, masked=2.0, unmask=2.0),
        min_clients=devices // 2,
        target_clients=len(directory),
        max_update_bytes=MAX_BYTES,
    )
    plan = rounds.plan_secure_round(config, seed=os.urandom(32))
    secure = SecureRound(config, round_id, aggregator, plan, dim, offences=offences, hunt=hunt)

    def feed(topic: str, payload: bytes) -> None:
        """The engine's per-message boundary (rate limit, then intake): a refused frame is counted."""
        try:
            parsed = topics.parse_round(topic)
            limits.check(parsed.sender, len(payload))
            secure.ingest(parsed, payload)
        except FedmqError as exc:
            sender = topic.rsplit("/", 1)[-1] if "/c/" not in topic else topic.split("/")[-3]
            offences.record(sender, type(exc).__name__, str(exc), context=f"round={round_id}")

    loopback = Loopback(topics, feed)
    now = time.time()
    announce = RoundAnnounce(
        federation=FED,
        round_id=round_id,
        base_version=0,
        phase="keys",
        opened_at=now,
        deadline=now + config.windows.total,
        min_clients=config.min_clients,
        target_clients=config.target_clients,
        plan=plan,
    )
    attack_p, miss_p = BEYOND_CLIP.get(attack, (0.0, 0.0))
    for device, identity in identities.items():
        if device != ROGUE and rng.random() < miss_p:
            continue  # an honest device that misses this round
        client_cls = Rogue if device == ROGUE and attack == "inconsistent-shares" else SecAggClient
        client = client_cls(FED, device, identity, bytes(aggregator.verify_key), directory)
        examples = 10**6 if device == ROGUE and attack == "weight-lie" else 130
        training = asyncio.get_running_loop().create_future()
        training.set_result(_result(dim, examples, rng))
        outbox = _Rogue(loopback, topics, attack, identity) if device == ROGUE else Outbox(loopback, topics)
        part = SecureParticipation(client, announce, training, dim, outbox=outbox, keep_encoded=True)
        if device == ROGUE and attack in BEYOND_CLIP and rng.random() < attack_p:
            original_mask = client.mask

            def amplified(x, shared, workers=1, in_place=False, _mask=original_mask):  # type: ignore[no-untyped-def]
                y = x.astype(np.uint64)
                y[: len(y) // 2] *= 40  # data coordinates only (the weight limbs are at the end)
                return _mask((y % (1 << 16)).astype(np.uint32), shared, workers, False)

            client.mask = amplified  # type: ignore[method-assign]
        loopback.parts[device] = part

    if attack in ("decoder-bomb", "chunk-flood", "message-flood"):
        loopback.spawn(_flood(attack, round_id, topics, feed))
    for part in loopback.parts.values():
        loopback.spawn(part.start())
    outcome: dict = {"closed": False, "exact": False, "reason": "", "rogue_sat_out": ROGUE in secure.sat_out}
    try:
        await secure.run(Outbox(loopback, topics))
        survivors = set(secure.server.masked) if secure.server else set()
        expected = np.zeros_like(secure.total, dtype=np.uint64)
        for device in survivors:
            expected += loopback.parts[device].encoded.astype(np.uint64)
        expected %= 1 << secure.config.bits
        outcome.update(closed=True, exact=bool(np.array_equal(expected, secure.total)))
        outcome["rogue_in_sum"] = ROGUE in survivors
        if attack == "weight-lie" and ROGUE in survivors:
            outcome["rogue_weight_share"] = 1.0 / _total_weight(secure)
    except FedmqError as exc:  # RoundAbandoned, or a refused aggregate
        outcome["reason"] = f"{type(exc).__name__}: {exc}"[:200]
    for task in list(loopback.tasks):
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*loopback.tasks, return_exceptions=True)
    return outcome


def _total_weight(secure: SecureRound) -> float:
    _, weight = UpdateDecoder(secure.config, secure.dim).decode(secure.total, len(secure.server.masked))
    return weight


async def _quietly(coro: Awaitable[None]) -> None:
    """A device step; a refusal (e.g. an honest device refusing a bad bundle) never ends the round."""
    with contextlib.suppress(FedmqError):
        await coro


def _tamper(attack: str, kind: str, msg: Message, identity) -> Message:  # type: ignore[no-untyped-def]
    if attack == "garbage-bundles" and kind == "shares":
        return replace(msg, ciphertexts={k: nacl.utils.random(len(v)) for k, v in msg.ciphertexts.items()})
    if attack == "rewrapped-bundles" and kind == "shares":
        peers = sorted(msg.ciphertexts)
        rotated = {p: msg.ciphertexts[peers[(i + 1) % len(peers)]] for i, p in enumerate(peers)}
        return replace(msg, ciphertexts=rotated)
    if attack == "corrupt-reveal" and kind == "unmask" and isinstance(msg, UnmaskReveal):
        bad = replace(msg, self_mask_shares={v: nacl.utils.random(33) for v in msg.self_mask_shares})
        return replace(bad, signature=keys.sign(identity, bad.signed_bytes()))
    if attack == "weak-key" and kind == "keys":
        bad = replace(msg, mask_pk=bytes(32))
        return replace(bad, signature=keys.sign(identity, bad.signed_bytes()))
    return msg


def _bomb(groups: int = 15, count: int = 90_000) -> bytes:
    inner = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    return bytes([0x80 | groups]) + b"".join(bytes([0xA1, 97 + i]) + inner for i in range(groups))


_BOMB = _bomb()


async def _flood(attack: str, round_id: int, topics: Topics, feed: Callable[[str, bytes], None]) -> None:
    """The rogue's messages, one intake iteration each (as the broker would deliver them)."""
    topic = topics.round_msg(round_id, "keys", ROGUE)
    if attack == "decoder-bomb":
        frames = [(topic, _BOMB)] * 50 + [(topic, b"\x81\xa1a" + b"\x91" * 1000 + b"\xc0")]
    elif attack == "chunk-flood":
        chunk_topic = topics.round_chunk(round_id, "keys", ROGUE, 0)
        frames = [
            (chunk_topic, encode(Chunk(i.to_bytes(16, "big"), 0, b"" if i % 2 else b"z" * 1024)))
            for i in range(5_000)
        ]
    else:
        frames = [(topic, b"\x93garbage" + i.to_bytes(4, "big")) for i in range(10_000)]
    for frame_topic, payload in frames:
        feed(frame_topic, payload)
        await asyncio.sleep(0)


async def _lag_monitor(stop: asyncio.Event, worst: list[float]) -> None:
    tick = 0.01
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(tick)
        worst[0] = max(worst[0], time.perf_counter() - started - tick)


async def run_class(attack: str, rounds: int, devices: int, dim: int, seed: int) -> dict:
    identities = {f"dev-{i:02d}": generate_identity() for i in range(devices)}
    if attack != "none":
        identities[ROGUE] = generate_identity()
    aggregator = generate_identity()
    offences = Offences(interval_s=3600.0)
    limits = SenderLimits(burst_bytes=2 * MAX_BYTES + 1024 * 1024, bytes_per_s=MAX_BYTES / 4)
    rng = np.random.default_rng(seed)
    hunt = Hunt(rng=random.Random(seed))
    stop = asyncio.Event()
    worst = [0.0]
    monitor = asyncio.create_task(_lag_monitor(stop, worst))
    cpu0 = time.process_time()
    outcomes = []
    named_at: list[int] = []
    for r in range(rounds):
        outcomes.append(await _one_round(attack, r + 1, devices=devices, dim=dim, identities=identities,
                                         aggregator=aggregator, offences=offences, limits=limits,
                                         rng=rng, hunt=hunt))  # fmt: skip
        if offences.counts[(ROGUE, BEYOND_CLIP_RULE)] > len(named_at):
            named_at.append(r + 1)
    stop.set()
    await monitor
    cpu = time.process_time() - cpu0
    named = offences.by_sender().get(ROGUE, {})
    honest_named = {s: rules for s, rules in offences.by_sender().items() if s != ROGUE}
    weight_shares = [o["rogue_weight_share"] for o in outcomes if "rogue_weight_share" in o]
    return {
        "attack": attack,
        "description": CLASSES[attack],
        "rounds": rounds,
        "closed": sum(o["closed"] for o in outcomes),
        "exact": sum(o["exact"] for o in outcomes),
        "exact_fraction": sum(o["exact"] for o in outcomes) / rounds,
        "rogue_in_sum": sum(bool(o.get("rogue_in_sum")) for o in outcomes),
        "rogue_named": named,
        "honest_named": honest_named,
        "log_lines": offences.lines_logged,
        "cpu_s_per_round": cpu / rounds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "max_loop_lag_s": worst[0],
        "abandon_reasons": sorted({o["reason"] for o in outcomes if o["reason"]})[:3],
        "rogue_weight_share_max": max(weight_shares) if weight_shares else None,
        "rogue_named_at_rounds": named_at,
        "rounds_with_rogue_excluded": sum(bool(o.get("rogue_sat_out")) for o in outcomes),
    }


def _child(args: argparse.Namespace) -> None:
    row = asyncio.run(run_class(args.child, args.rounds, args.devices, args.dim, args.seed))
    sys.stdout.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--devices", type=int, default=8, help="honest devices (plus one rogue)")
    parser.add_argument("--dim", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=",".join(CLASSES))
    parser.add_argument("--json", type=Path, default=None, help="write the results here (nowhere else)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    rows = []
    for attack in args.classes.split(","):
        if attack not in CLASSES:
            parser.error(f"unknown class {attack!r}; one of {', '.join(CLASSES)}")
        command = [sys.executable, "-m", "benchmarks.adversarial", "--child", attack, "--rounds",
                   str(args.rounds), "--devices", str(args.devices), "--dim", str(args.dim), "--seed",
                   str(args.seed)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
        if done.returncode != 0:
            raise SystemExit(f"class {attack} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(_line(rows[-1], rows[0]), flush=True)
    baseline = next((r for r in rows if r["attack"] == "none"), rows[0])
    for row in rows:
        row["rss_vs_baseline"] = row["peak_rss_mb"] / baseline["peak_rss_mb"]
        row["cpu_vs_baseline"] = row["cpu_s_per_round"] / baseline["cpu_s_per_round"]
        row["meets_targets"] = bool(
            row["exact_fraction"] >= 0.99 and row["max_loop_lag_s"] <= 0.5 and row["rss_vs_baseline"] <= 1.5
        )
    if args.json is not None:
        options = {"rounds": args.rounds, "devices": args.devices, "dim": args.dim, "seed": args.seed}
        reproduce = "python -m benchmarks.adversarial " + " ".join(f"--{k} {v}" for k, v in options.items())
        reproduce += f" --classes {args.classes} --json {args.json}"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reproduce": reproduce, "rows": rows}, indent=2))


def _line(row: dict, baseline: dict) -> str:
    return (
        f"{row['attack']:<20} exact {row['exact']:>4}/{row['rounds']:<4} closed {row['closed']:>4}  "
        f"lag {row['max_loop_lag_s']:.3f}s  rss {row['peak_rss_mb']:.0f} MB  "
        f"cpu {row['cpu_s_per_round']:.3f}s/round  named {row['rogue_named']}  "
        f"honest named {row['honest_named']}"
        + (f"  named at rounds {row['rogue_named_at_rounds']}" if row.get("rogue_named_at_rounds") else "")
    )


if __name__ == "__main__":
    main()
