"""Nothing dies silently: one bad message, one failing handler or one failing background task never
stops the aggregator or a device; a task that keeps failing ends the process with its cause.

Each test injects the fault and shows that the next round still closes (or that the run ends with the
cause), over a real Mosquitto."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from aggregator import cli as aggregator_cli
from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.plain import PlainRound
from aggregator.secure import PhaseWindows
from edge_client.secure import SecureParticipation
from edge_client.trainer import LocalTrainer, TrainResult
from shared.codec import CodecConfig
from shared.mqtt import MqttConnection
from shared.snapshots import make_snapshot, write_initial
from shared.supervision import INTERNAL_ERROR, SupervisionError
from shared.topics import UPDATE, Topics
from shared.wire import ModelUpdate, Presence, encode
from shared.wire.roster import NeighbourKeys
from tests.integration.test_rounds import FED, agg_config, initial_snapshot
from tests.support import (
    enrol,
    eventually,
    initial_weights,
    make_devices,
    mqtt_config,
    run_rounds,
    secure_devices,
)

pytestmark = pytest.mark.broker


def plain_config(broker, tmp_path, **kw) -> AggregatorConfig:
    """The round tests' plain aggregator, closing at three devices."""
    return agg_config(
        broker, tmp_path, **{"round_window_s": 30.0, "min_clients": 3, "target_clients": 3, **kw}
    )


async def publish_raw(broker, messages: list[tuple[str, bytes, bool]]) -> None:
    async with MqttConnection(mqtt_config(broker, "tester")) as conn:
        await conn.wait_connected()
        for topic, payload, retain in messages:
            await conn.publish(topic, payload, retain=retain)


def closed_with(results, count: int) -> list[bool]:
    return [r.status == "closed" and r.contributors == count for r in results]


async def test_malformed_topics_and_presence_never_stop_the_aggregator_or_devices(broker, tmp_path, digits):
    topics = Topics(FED)
    junk = b"\x93junk"
    stranger = encode(Presence("x y", True, 0.0))  # a client id no topic may carry
    # Retained, so it reaches every aggregator that ever starts: it once stopped intake for good.
    await publish_raw(broker, [(f"{topics.prefix}/status/x y", stranger, True)])
    async with Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot()) as agg:
        await agg._conn.wait_connected()
        await publish_raw(
            broker,
            [
                (f"{topics.prefix}/status/dev-000", encode(Presence("dev-001", True, 0.0)), False),
                (f"{topics.prefix}/r/²/update/dev-000", junk, False),
                (f"{topics.prefix}/r/0/update/dev-000/c/٣", junk, False),
            ],
        )
        # The two presence messages are counted before any device connects (the broker orders only one
        # client's messages, so the rounds below say nothing about when the tester's arrived); the round
        # messages wait in the intake until round 0 opens, which handles them first.
        await eventually(
            lambda: agg.faults.by_rule["WireError"] >= 1 and agg.faults.by_rule["ProtocolError"] >= 1,
            30,
            what="the tester's presence junk counted",
        )
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)

        async def device_junk() -> None:
            """Junk on topics devices follow, re-sent until every device has counted one more: whether a
            device follows the delta at a given instant depends on where it is in its round."""
            bad = [f"{topics.delta}/c/²", f"{topics.model}/c/01", f"{topics.inbox('dev-000')}/c/²"]
            before = [d.stats.faults.by_rule["WireError"] for d in devices]
            async with asyncio.timeout(30):
                while any(d.stats.faults.by_rule["WireError"] <= n for d, n in zip(devices, before)):
                    await publish_raw(broker, [(topic, junk, False) for topic in bad])
                    await asyncio.sleep(0.5)
                # The new snapshot reaches each device some time after the round closes.
                await asyncio.gather(*(d.wait_for_version(agg.version, 15) for d in devices))

        results = await run_rounds(agg, devices, 2, between=device_junk)
        rules = {(r.sender, r.rule) for r in agg.faults.recent}
    assert closed_with(results, 3) == [True, True], results
    assert ("x y", "WireError") not in rules  # the topic names no device: counted by its topic
    assert {f"{topics.prefix}/status/x y", "dev-000"} <= {sender for sender, _ in rules}
    assert agg.faults.by_rule["WireError"] >= 3 and agg.faults.by_rule["ProtocolError"] >= 1
    assert agg.supervisor.failures.total() == 0
    for device in devices:
        assert device.stats.faults.by_rule["WireError"] >= 2, device.stats.faults.by_rule
        assert device.version == 2


async def test_an_exception_in_a_message_handler_is_counted_and_named(
    broker, tmp_path, digits, caplog, monkeypatch
):
    agg = Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot())
    validate = PlainRound._validate

    def validate_or_explode(current, msg, sender):
        if sender == "rogue":
            raise RuntimeError("injected handler bug")
        return validate(current, msg, sender)

    def presence_explodes(presence):
        raise RuntimeError("injected presence bug")

    monkeypatch.setattr(PlainRound, "_validate", validate_or_explode)
    agg._record_presence = presence_explodes  # type: ignore[method-assign]
    dim = initial_weights()[1].size
    rogue = ModelUpdate(0, "rogue", 0, 10, "f32", dim, np.zeros(dim, "<f4").tobytes(), {})
    caplog.set_level(logging.WARNING, logger="aggregator.engine")
    async with agg:
        # Published once the aggregator has subscribed (else the broker drops it: nobody follows the topic);
        # held by the intake until round 0 opens, then handled first.
        await agg._conn.wait_connected()
        await publish_raw(broker, [(Topics(FED).round_msg(0, UPDATE, "rogue"), encode(rogue), False)])
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        results = await run_rounds(agg, devices, 2)
    assert closed_with(results, 3) == [True, True], results
    internal = [r for r in agg.faults.recent if r.rule == INTERNAL_ERROR]
    assert {"rogue", *(d.client_id for d in devices)} <= {r.sender for r in internal}, internal
    lines = [r.getMessage() for r in caplog.records if "rule=internal-error" in r.getMessage()]
    assert any("from=rogue" in line and "injected handler bug" in line for line in lines), lines
    assert all(r.exc_info for r in caplog.records if "rule=internal-error" in r.getMessage())


async def test_a_failing_intake_task_is_restarted_and_rounds_go_on(broker, tmp_path, digits, monkeypatch):
    original = Aggregator._intake_loop
    starts = 0

    async def flaky_intake(self):
        nonlocal starts
        starts += 1
        if starts == 1:
            raise RuntimeError("injected intake failure")
        await original(self)

    monkeypatch.setattr(Aggregator, "_intake_loop", flaky_intake)
    async with Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot()) as agg:
        agg.supervisor.backoff_s = 0.05
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        results = await run_rounds(agg, devices, 2)
    assert closed_with(results, 3) == [True, True], results
    assert agg.supervisor.failures["intake"] == 1 and starts == 2


async def test_a_failing_round_is_abandoned_with_its_cause_and_the_next_one_closes(broker, tmp_path, digits):
    agg = Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot())
    close = agg._close
    calls = 0

    async def close_once_broken(opened):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected round failure")
        await close(opened)

    agg._close = close_once_broken  # type: ignore[method-assign]
    async with agg:
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        results = await run_rounds(agg, devices, 2)
        stored = [(r.status, r.reason) for r in agg.store.rounds()]
    assert [r.status for r in results] == ["abandoned", "closed"], results
    assert "injected round failure" in results[0].reason and INTERNAL_ERROR in results[0].reason
    assert results[1].contributors == 3 and results[1].version == 1
    assert stored[0][0] == "abandoned" and stored[1][0] == "closed"
    assert agg.round_failures == 1


async def test_an_intake_that_keeps_failing_ends_the_run_with_its_cause(broker, tmp_path, monkeypatch):
    async def broken_intake(self):
        raise RuntimeError("injected permanent failure")

    monkeypatch.setattr(Aggregator, "_intake_loop", broken_intake)
    agg = Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot())
    agg.supervisor.backoff_s = 0.01
    async with agg:
        with pytest.raises(SupervisionError, match="intake failed: RuntimeError: injected permanent failure"):
            await asyncio.wait_for(agg.run(3), timeout=30)
    assert agg.supervisor.failures["intake"] == agg.supervisor.max_failures


def test_the_aggregator_cli_exits_with_a_one_line_cause(broker, tmp_path, monkeypatch, caplog):
    async def broken_intake(self):
        raise RuntimeError("injected permanent failure")

    monkeypatch.setattr(Aggregator, "_intake_loop", broken_intake)
    write_initial(tmp_path / "initial.fedmq", initial_snapshot())
    caplog.set_level(logging.INFO)
    code = aggregator_cli.main(
        ["--broker", broker.url, "--federation", FED, "--store", str(tmp_path / "agg"), "--mode", "plain",
         "--initial", str(tmp_path / "initial.fedmq"), "--rounds", "1"]
    )  # fmt: skip
    assert code == 2
    last = caplog.records[-1]
    assert last.levelno == logging.ERROR and "\n" not in last.getMessage()
    assert "intake failed: RuntimeError: injected permanent failure" in last.getMessage()


async def test_a_failing_device_handler_is_contained_and_the_device_rejoins(broker, tmp_path, digits):
    config = plain_config(broker, tmp_path, round_window_s=8.0)
    async with Aggregator(config, initial=initial_snapshot()) as agg:
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        for device in devices:
            on_round = device._on_round
            failed: list[bool] = []

            def first_announcement_explodes(announce, on_round=on_round, failed=failed):
                if not failed:
                    failed.append(True)
                    raise RuntimeError("injected device handler bug")
                on_round(announce)

            device._on_round = first_announcement_explodes  # type: ignore[method-assign]
        results = await run_rounds(agg, devices, 2)
    # Round 0's announcement hit the bug on every device (so it was abandoned); round 1 closes with all.
    assert results[0].status == "abandoned" and closed_with(results[1:], 3) == [True], results
    for device in devices:
        assert device.stats.faults.by_rule[INTERNAL_ERROR] == 1


class FailsOnce(LocalTrainer):
    """A trainer whose first local training raises (a bug, a full disk, an out-of-memory)."""

    failures = 0

    def train(self, *args, **kwargs) -> TrainResult:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("injected training failure")
        return super().train(*args, **kwargs)


async def test_a_failed_training_or_secure_step_is_contained_and_the_device_contributes_again(
    broker, tmp_path, digits, caplog, monkeypatch
):
    keys = enrol(6)  # six, so the neighbourhoods tolerate one dropout (SecAgg+ threshold 4)
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory={cid: bytes(k.verify_key) for cid, k in keys.items()},
        codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=10, shares=10, masked=6, unmask=10),
        min_clients=4,
        target_clients=6,
    )
    caplog.set_level(logging.INFO, logger="edge_client.client")
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = secure_devices(broker, digits, keys, agg.verify_key, FED)
        victim = devices[0]
        victim.trainer.__class__ = FailsOnce  # the same trainer, now failing its first training
        on_roster = SecureParticipation.on_roster

        async def roster_bug_in_round_1(self, roster):  # on the roster, not on its neighbour keys
            keys_half = isinstance(roster, NeighbourKeys)
            if self.secagg.device_id == devices[1].client_id and self.round_id == 1 and not keys_half:
                raise RuntimeError("injected secure-step bug")
            await on_roster(self, roster)

        monkeypatch.setattr(SecureParticipation, "on_roster", roster_bug_in_round_1)
        results = await run_rounds(agg, devices, 3, timeout=150)
    assert victim.stats.failed_trainings == 1
    failures = [r for r in caplog.records if "local training failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    # Round 0 goes on without the victim's input, round 1 without the device whose step failed; each
    # failure was that device's alone, and in round 2 every device contributes again.
    assert closed_with(results, 5)[:2] == [True, True] and closed_with(results[2:], 6) == [True], results
    assert devices[1].stats.faults.by_rule[INTERNAL_ERROR] == 1


async def test_a_late_re_send_is_refused_but_no_offence_and_a_future_round_is(broker, tmp_path, digits):
    """A device's delivery ledger re-sends until the aggregator moves on, so an update for a round that
    has closed is what an honest device's re-send looks like: refused and counted (``LateMessage``), never
    an offence that would name or quarantine it. One for a round that never opened is an offence."""
    agg = Aggregator(plain_config(broker, tmp_path), initial=initial_snapshot())
    dim = initial_weights()[1].size
    topics = Topics(FED)

    def update(round_id: int, sender: str) -> tuple[str, bytes, bool]:
        msg = ModelUpdate(round_id, sender, 0, 10, "f32", dim, np.zeros(dim, "<f4").tobytes(), {})
        return topics.round_msg(round_id, UPDATE, sender), encode(msg), False

    async with agg:
        await agg._conn.wait_connected()
        devices = make_devices(broker, digits, 3, agg.verify_key, FED)
        results = await run_rounds(agg, devices, 1)
        honest, rogue = devices[0].client_id, devices[1].client_id
        refused = agg.faults.by_rule.copy()
        await publish_raw(broker, [update(0, honest), update(7, rogue)])  # round 0 closed; 7 never opened
        async with asyncio.timeout(30):
            while sum(agg.faults.by_rule.values()) < sum(refused.values()) + 2:
                await asyncio.sleep(0.05)
    assert closed_with(results, 3) == [True]
    assert agg.faults.by_rule["LateMessage"] == refused["LateMessage"] + 1
    assert agg.faults.by_rule["ProtocolError"] == refused["ProtocolError"] + 1
    offenders = {sender for sender, _ in agg.offences.counts}
    assert rogue in offenders and honest not in offenders
