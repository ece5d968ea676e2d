"""``fedmq-aggregator`` / ``python -m aggregator``: run the round engine as a service.

Settings come from a TOML file (``--config``, as ``fedmq init`` writes it), ``FEDMQ_*`` environment
variables and flags, in increasing precedence; secrets only from the file or the environment. The table
of every setting is ``OPTIONS`` below (and docs/operations.md). Exit codes: ``shared/service.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from aggregator.config import MODES, AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.enrolment import EnrolmentPublisher, load_directory
from aggregator.ledger import Ledger
from aggregator.metrics import Metrics, MetricsServer, parse_listen
from aggregator.optimizer import OPTIMIZERS, ServerOptimizerConfig
from aggregator.retention import prune_snapshots
from aggregator.secure import PhaseWindows
from aggregator.takeover import supersede_predecessor
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import BrokerUnreachable, ConfigError
from shared.mqtt import MqttTimeout
from shared.quarantine import QuarantinePolicy
from shared.service import EXIT_OK, LOG_OPTIONS, broker_options, mqtt_config, report_fatal, setup_logging
from shared.settings import Option, add_arguments, resolve
from shared.signing import load_or_create_key, read_directory
from shared.staleness import FUNCTIONS, StalenessPolicy

log = logging.getLogger("aggregator")

Opt = Option
OPTIONS: list[Option] = [
    Opt("federation", default="demo", flag="--federation", help="federation id"),
    *broker_options("aggregator"),
    *LOG_OPTIONS,
    Opt("aggregator.store", type="path",
        help="folder for the journal, snapshots and the aggregator key (required)"),
    Opt("aggregator.initial", type="path", help="initial snapshot file (first start only)"),
    Opt("aggregator.mode", default="secure", choices=MODES, help="secure aggregation, or plain (trusted)"),
    Opt("aggregator.rounds", type="int", help="stop after this many rounds (default: run on)"),
    Opt("aggregator.directory", type="path",
        help="static JSON {device id: hex key} (instead of [enrolment])"),
    Opt("aggregator.takeover", type="bool", default=True,
        help="on an empty store, adopt this key's retained model on the broker (or clear another key's)"),
    Opt("aggregator.summing_workers", type="int", default=0,
        help="secure: sum masked inputs in N worker processes on a shared subscription (0: in-process)"),
    Opt("aggregator.enrolled", type="path", help="plain mode: file with one device id per line"),
    Opt("enrolment.list", type="path", flag="--enrolment",
        help="signed enrolled set, watched live (fedmq init)"),
    Opt("enrolment.authority_key", type="hexkey", help="enrolment authority's public key (hex)"),
    Opt("enrolment.addition_grace", type="float", default=3.0,
      help="seconds between publishing a list and admitting its new devices to rosters"),
    Opt("rounds.window", type="float", help="masked-input window (legacy name of rounds.masked_window)"),
    Opt("rounds.keys_window", type="float", default=5.0, help="secure: seconds to collect keys"),
    Opt("rounds.shares_window", type="float", default=5.0, help="secure: seconds to collect share bundles"),
    Opt("rounds.masked_window", type="float", default=30.0,
      help="secure: seconds for training + masked inputs; plain: the round window"),
    Opt("rounds.unmask_window", type="float", default=5.0, help="secure: seconds to collect reveals"),
    Opt("rounds.min_clients", type="int", default=2, help="fewer updates abandon the round"),
    Opt("rounds.target_clients", type="int", default=10, help="this many updates close the round early"),
    Opt("rounds.over_selection", type="float", default=1.3,
        help="admit up to this x target to the keys phase"),
    Opt("rounds.gap", type="float", default=0.0, flag="--round-gap", help="seconds of pause between rounds"),
    Opt("rounds.optimizer", default="fedavg", choices=OPTIMIZERS, help="server optimizer"),
    Opt("rounds.server_lr", type="float", default=1.0, help="server learning rate"),
    Opt("rounds.dropout_rate", type="float", default=0.2,
        help="secure: dropouts the neighbour graph tolerates"),
    Opt("rounds.weight_cap", type="int", default=1000, help="a device weighs min(examples / cap, 1)"),
    Opt("codec.bits", type="int", default=16, help="secure: bits per coordinate"),
    Opt("codec.clip_norm", type="float", default=5.0, help="secure: L2 clip of each update"),
    Opt("codec.subsample", type="float", default=1.0, help="secure: fraction of coordinates sent"),
    Opt("codec.rotation", type="bool", default=True, help="secure: randomized Hadamard rotation"),
    Opt("codec.snapshot_encoding", default="f16", choices=("f16", "q16", "q8", "f32"),
        help="downlink encoding"),
    Opt("codec.deltas", type="bool", default=True, help="also publish deltas for up-to-date devices"),
    Opt("dp.mode", default="off", choices=("off", "distributed", "central"), flag="--dp",
        help="differential privacy"),
    Opt("dp.noise_multiplier", type="float", flag="--dp-noise", help="noise std / sensitivity"),
    Opt("dp.target_epsilon", type="float", flag="--dp-target-epsilon",
        help="calibrate noise to this epsilon"),
    Opt("dp.target_rounds", type="int", flag="--dp-target-rounds", help="... over this many rounds"),
    Opt("dp.delta", type="float", flag="--dp-delta", help="the delta of (epsilon, delta)"),
    Opt("dp.sampling_q", type="float", flag="--dp-sampling-q", help="Poisson participation probability"),
    Opt("dp.budget_epsilon", type="float", flag="--dp-budget", help="stop before epsilon would pass this"),
    Opt("staleness.function", default="fedbuff", choices=FUNCTIONS, flag="--staleness",
        help="stale-delta weight"),
    Opt("staleness.max_staleness", type="int", default=4, help="oldest base version accepted, in rounds"),
    Opt("partial.enabled", type="bool", default=False, flag="--partial-training",
      help="size each round's blocks to the smallest declared memory budget"),
    Opt("partial.rotation_step", type="bool", default=True, help="scale block steps by the rotation"),
    Opt("quarantine.rounds", flag="--quarantine-rounds", type="int", default=100,
        help="rounds a device named for a quarantining rule sits out (first offence)"),
    Opt("quarantine.seconds", flag="--quarantine-seconds", type="float", default=0.0,
        help="... and at least these seconds"),
    Opt("quarantine.escalation", flag="--quarantine-escalation", type="float", default=4.0,
        help="a repeat offence's quarantine is this many times longer"),
    Opt("quarantine.permanent_after", flag="--quarantine-permanent-after", type="int", default=0,
        help="offences that make a quarantine permanent (0: never)"),
    Opt("hunt.tolerated", flag="--hunt-tolerated", type="int", default=1,
        help="beyond-clip hunt: misbehaving devices assumed at most (0: no hunt)"),
    Opt("retention.keep_snapshots", type="int", default=10, help="snapshot files kept in the store"),
    Opt("retention.keep_journal_rounds", type="int", default=5, help="rounds of journal kept"),
    Opt("metrics.listen", flag="--metrics", help="host:port for Prometheus /metrics and /healthz"),
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedmq-aggregator", description="fedmq aggregator (round engine)")
    add_arguments(p, OPTIONS)
    return p.parse_args(argv)


def _dp(v: dict[str, Any]) -> DPConfig:
    if v["dp.mode"] == "off":
        return DPConfig()
    return DPConfig(
        mode=v["dp.mode"],
        noise_multiplier=v["dp.noise_multiplier"],
        target_epsilon=v["dp.target_epsilon"],
        target_rounds=v["dp.target_rounds"],
        delta=v["dp.delta"],
        clip_norm=v["codec.clip_norm"],
        sampling_q=v["dp.sampling_q"],
        budget_epsilon=v["dp.budget_epsilon"],
    )


def build_config(v: dict[str, Any], directory: Any = None) -> AggregatorConfig:
    """An :class:`AggregatorConfig` from resolved settings (``directory`` from the enrolment list)."""
    if v["aggregator.store"] is None:
        raise ConfigError("aggregator.store", "required: the folder for the journal and snapshots")
    enrolled = None
    if v["aggregator.enrolled"] is not None:
        text = v["aggregator.enrolled"].read_text()
        enrolled = frozenset(line.strip() for line in text.splitlines() if line.strip())
    if directory is None and v["aggregator.directory"] is not None:
        directory = read_directory(v["aggregator.directory"])
    masked = v["rounds.window"] if v["rounds.window"] is not None else v["rounds.masked_window"]
    windows = PhaseWindows(
        keys=v["rounds.keys_window"], shares=v["rounds.shares_window"], masked=masked,
        unmask=v["rounds.unmask_window"],
    )  # fmt: skip
    codec = CodecConfig(
        bits=v["codec.bits"], clip_norm=v["codec.clip_norm"], expected_clients=1, seed=bytes(32),
        rotation=v["codec.rotation"], subsample_rate=v["codec.subsample"],
    )  # fmt: skip
    return AggregatorConfig(
        federation=v["federation"],
        mqtt=mqtt_config(v, v["broker.client_id"] or "aggregator"),
        store_dir=v["aggregator.store"],
        mode=v["aggregator.mode"],
        directory=directory,
        codec=codec,
        windows=windows,
        dropout_rate=v["rounds.dropout_rate"],
        weight_cap=v["rounds.weight_cap"],
        snapshot_encoding=v["codec.snapshot_encoding"],
        publish_deltas=v["codec.deltas"],
        dp=_dp(v),
        staleness=StalenessPolicy(v["staleness.function"], v["staleness.max_staleness"]),
        over_selection=v["rounds.over_selection"],
        partial_training=v["partial.enabled"],
        rotation_step=v["partial.rotation_step"],
        round_window_s=masked,
        min_clients=v["rounds.min_clients"],
        target_clients=v["rounds.target_clients"],
        optimizer=ServerOptimizerConfig(v["rounds.optimizer"], lr=v["rounds.server_lr"]),
        enrolled=enrolled,
        round_gap_s=v["rounds.gap"],
        keep_journal_rounds=v["retention.keep_journal_rounds"],
        quarantine=QuarantinePolicy(
            v["quarantine.rounds"],
            v["quarantine.seconds"],
            v["quarantine.escalation"],
            v["quarantine.permanent_after"],
        ),
        hunt_tolerated=v["hunt.tolerated"],
        summing_workers=v["aggregator.summing_workers"],
    )


async def _startup_deadline(aggregator: Aggregator, timeout: float, stop: asyncio.Event) -> None:
    """End the service if the broker is not reached within ``timeout`` seconds of the start."""
    conn = aggregator._conn
    assert conn is not None
    try:
        waiter = asyncio.ensure_future(conn.wait_connected(timeout))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            return
        waiter.result()
    except MqttTimeout as exc:
        host = f"{aggregator.config.mqtt.host}:{aggregator.config.mqtt.port}"
        raise BrokerUnreachable(f"broker {host} not reachable within {timeout:.0f}s ({exc})") from None


async def _cancel_after_stop(runner: asyncio.Task[Any], stop: asyncio.Event, grace_s: float = 3.0) -> None:
    """Once ``stop`` is set, give the round loop ``grace_s`` to wind down, then cancel it: a stop request
    is honoured in every state (even while a broker connection attempt is still pending)."""
    await stop.wait()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.shield(runner), grace_s)
    runner.cancel()


async def serve(v: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    publisher = None
    directory = None
    if v["enrolment.list"] is not None:
        if v["enrolment.authority_key"] is None:
            raise ConfigError("enrolment.authority_key", "needed to verify the enrolment list")
        authority = v["enrolment.authority_key"]
        directory, current = load_directory(v["enrolment.list"], authority, v["federation"])
        log.info("enrolment list serial %d: %d devices", current.serial, len(directory))
    config = build_config(v, directory)
    if directory is not None:
        publisher = EnrolmentPublisher(
            config.mqtt, config.federation, v["enrolment.list"], v["enrolment.authority_key"], directory,
            current, addition_grace_s=v["enrolment.addition_grace"],
        )  # fmt: skip
    if v["aggregator.takeover"]:
        key = load_or_create_key(Path(config.store_dir) / "aggregator.key")
        timeout = v["broker.startup_timeout"] or 365 * 24 * 3600.0
        takeover = asyncio.create_task(supersede_predecessor(config, bytes(key.verify_key), timeout=timeout))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({takeover, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not takeover.done():  # SIGTERM/SIGINT before the broker answered
            takeover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await takeover
            log.info("stopped before the start")
            return
        try:
            log.info("start: %s", takeover.result())
        except MqttTimeout:
            where = f"{config.mqtt.host}:{config.mqtt.port}"
            raise BrokerUnreachable(f"broker {where} not reachable within {timeout:.0f}s") from None
    aggregator = Aggregator(config, initial=v["aggregator.initial"])
    ledger = Ledger(Path(config.store_dir) / "participation.json", config.federation)
    metrics = Metrics(aggregator)
    aggregator.intake_hooks.extend([ledger.on_message, metrics.on_message])
    keep = v["retention.keep_snapshots"]
    if keep < 1:
        raise ConfigError("retention.keep_snapshots", "must be >= 1")

    def observe(result: Any, weights: Any) -> None:
        metrics.on_round(result, weights)
        ledger.on_round(aggregator, result, weights)
        if aggregator.store is not None:
            prune_snapshots(aggregator.store, keep)

    aggregator.observers.append(observe)
    server = None
    tasks: list[asyncio.Task[Any]] = []
    async with aggregator:
        try:
            if v["metrics.listen"]:
                host, port = parse_listen(v["metrics.listen"])
                server = await MetricsServer(metrics, host, port).start()
            if publisher is not None:
                tasks.append(asyncio.create_task(publisher.run(stop), name="enrolment"))
            runner = asyncio.create_task(aggregator.run(v["aggregator.rounds"], stop))
            tasks.append(asyncio.create_task(_cancel_after_stop(runner, stop)))
            guards: list[asyncio.Task[Any]] = [runner]
            if v["broker.startup_timeout"]:
                deadline = _startup_deadline(aggregator, v["broker.startup_timeout"], stop)
                guards.append(asyncio.create_task(deadline))
            await asyncio.wait(guards, return_when=asyncio.FIRST_EXCEPTION)
            for task in guards[1:]:
                if task.done() and task.exception() is not None:
                    runner.cancel()
                    raise task.exception()  # type: ignore[misc]
            try:
                results = await runner
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
                results = aggregator.results
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5.0)
            if server is not None:
                await server.close()
    closed = sum(r.status == "closed" for r in results)
    log.info("stopped after %d rounds (%d closed); model at v%d", len(results), closed, aggregator.version)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        values = resolve(OPTIONS, args)
        setup_logging(values["log.level"], values["log.json"])
        asyncio.run(serve(values))
    except Exception as exc:
        if not logging.getLogger().handlers:
            setup_logging("INFO")
        return report_fatal(log, exc)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
