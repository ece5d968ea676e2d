"""Full rounds over a real Mosquitto: aggregator and devices in one event loop, each with its own
MQTT connection."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import subprocess
import time

import msgpack
import nacl.signing
import numpy as np
import pytest
import torch
import zstandard

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.mqtt import MqttConnection
from shared.snapshots import make_snapshot
from shared.topics import UPDATE, Topics
from shared.wire import ModelUpdate, encode
from simulator.harness import running
from simulator.models import accuracy, digits_mlp
from tests.support import (
    eventually,
    every_broker,
    initial_weights,
    make_devices,
    mosquitto_and_nats,
    mqtt_config,
)

pytestmark = pytest.mark.broker
FED = "test"


def agg_config(broker, tmp_path, **kw) -> AggregatorConfig:
    values = dict(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        mode="plain",
        round_window_s=20.0,
        min_clients=2,
        target_clients=5,
    )
    values.update(kw)
    return AggregatorConfig(**values)


def initial_snapshot():
    model, weights = initial_weights()
    return make_snapshot(FED, 0, -1, model.layout, weights)


def test_accuracy(weights, digits) -> float:
    module = digits_mlp()
    from edge_client.model import FederatedModel

    FederatedModel(module).set_flat(weights)
    return accuracy(module, torch.from_numpy(digits.x_test), torch.from_numpy(digits.y_test))


test_accuracy.__test__ = False  # a helper, not a test
@every_broker


async def test_rounds_advance_version_and_improve_accuracy(broker, tmp_path, digits):
    snapshot = initial_snapshot()
    start_acc = test_accuracy(np.frombuffer(snapshot.weights, "<f4").copy(), digits)
    async with Aggregator(agg_config(broker, tmp_path, target_clients=6), initial=snapshot) as agg:
        devices = make_devices(broker, digits, 6, agg.verify_key, FED)
        async with running(devices):
            results = await asyncio.wait_for(agg.run(3), timeout=60)
            # The snapshot reaches each device some time after the round closes.
            await asyncio.gather(*(d.wait_for_version(3, timeout=15) for d in devices))
        assert [r.version for r in results] == [1, 2, 3]
        assert all(r.status == "closed" and r.contributors == 6 for r in results)
        assert agg.store.versions() == [0, 1, 2, 3]
        end_acc = test_accuracy(agg.weights, digits)
    assert end_acc > start_acc + 0.3, (start_acc, end_acc)
    assert all(d.version == 3 for d in devices)
@every_broker


async def test_late_device_gets_retained_snapshot_at_once(broker, tmp_path, digits):
    async with Aggregator(agg_config(broker, tmp_path), initial=initial_snapshot()) as agg:
        async with running(make_devices(broker, digits, 5, agg.verify_key, FED)):
            await asyncio.wait_for(agg.run(2), timeout=60)
        assert agg.version == 2
        late = make_devices(broker, digits, 1, agg.verify_key, FED, prefix="late")[0]
        # No round runs any more, so only the retained snapshot can reach it; the bound says it came on
        # connecting (a loaded 2-core machine can take seconds over the connect and its training estimate).
        t0 = time.monotonic()
        async with running([late]):
            await late.wait_for_version(2, timeout=20)
        assert time.monotonic() - t0 < 20
        assert late.version == 2
        np.testing.assert_array_equal(late.weights, agg.published_weights)
        # float16 snapshot: within half a float16 step of the float32 master
        np.testing.assert_allclose(late.weights, agg.weights, rtol=2**-10, atol=1e-7)


async def test_round_closes_at_deadline_with_those_who_answered(broker, tmp_path, digits):
    cfg = agg_config(broker, tmp_path, round_window_s=2.0, min_clients=2, target_clients=10)
    async with Aggregator(cfg, initial=initial_snapshot()) as agg:
        async with running(devices := make_devices(broker, digits, 3, agg.verify_key, FED)):
            # Subscribed before the round opens: its 2 s window is for training, not for connecting.
            await asyncio.gather(*(d.conn.wait_connected(timeout=30) for d in devices))
            t0 = time.monotonic()
            results = await asyncio.wait_for(agg.run(1), timeout=30)
            elapsed = time.monotonic() - t0
    assert results[0].status == "closed" and results[0].contributors == 3
    # It closed at its deadline, not waiting for the 10 targeted (the upper bound: it did not hang).
    assert 1.5 <= elapsed < 20, elapsed


async def test_round_below_minimum_is_abandoned_and_next_starts(broker, tmp_path, digits):
    cfg = agg_config(broker, tmp_path, round_window_s=1.0, min_clients=3, target_clients=3)
    async with Aggregator(cfg, initial=initial_snapshot()) as agg:
        before = agg.weights.copy()
        async with running(make_devices(broker, digits, 2, agg.verify_key, FED)):
            results = await asyncio.wait_for(agg.run(2), timeout=15)
        assert [r.status for r in results] == ["abandoned", "abandoned"]
        assert [r.round_id for r in results] == [0, 1]
        assert agg.version == 0 and "min_clients" in results[0].reason
        np.testing.assert_array_equal(agg.weights, before)
        assert [r.status for r in agg.store.rounds()] == ["abandoned", "abandoned"]
@mosquitto_and_nats


async def test_snapshot_and_updates_travel_chunked(broker, tmp_path, digits):
    cfg = agg_config(broker, tmp_path, chunk_limit=2048, target_clients=3)
    async with Aggregator(cfg, initial=initial_snapshot()) as agg:
        devices = make_devices(broker, digits, 3, agg.verify_key, FED, chunk_limit=2048)
        async with running(devices):
            results = await asyncio.wait_for(agg.run(1), timeout=30)
            # Every device, not only the first: each reassembles the chunked snapshot on its own.
            await asyncio.gather(*(d.wait_for_version(1, timeout=15) for d in devices))
        assert results[0].contributors == 3  # 19 KB updates in 2 KB chunks
        assert len(agg._snapshot_bytes) > 4 * 2048
        for device in devices:
            np.testing.assert_array_equal(device.weights, agg.published_weights)
            assert device.conn.stats.publishes > 10


def decode_compact_with_stock_libraries(blob: bytes) -> np.ndarray:
    """docs/wire.md's recipe for ``compact`` snapshots: msgpack, zstandard and numpy only."""
    dtypes = {"f16": "<f2", "q16": "<i2", "q8": "i1", "f32": "<f4"}
    container = msgpack.unpackb(blob, raw=False)
    assert container["fmt"] == "fedmq.snapshot"
    parts = []
    for tensor in container["tensors"]:
        codes = np.frombuffer(zstandard.ZstdDecompressor().decompress(tensor["data"]), dtypes[tensor["enc"]])
        values = codes.astype(np.float32)
        if tensor["enc"] in ("q16", "q8"):
            values *= np.float32(tensor["scale"])
        parts.append(values)
    return np.concatenate(parts)


@pytest.mark.parametrize("encoding", ["f32", "f16"])
async def test_stock_mosquitto_sub_reads_the_retained_snapshot(broker, tmp_path, digits, encoding):
    # Closes at its two devices rather than at the 20 s window.
    cfg = agg_config(broker, tmp_path, snapshot_encoding=encoding, target_clients=2)
    async with Aggregator(cfg, initial=initial_snapshot()) as agg:
        async with running(make_devices(broker, digits, 2, agg.verify_key, FED)):
            await asyncio.wait_for(agg.run(1), timeout=30)
        out = subprocess.run(  # -C 1: it exits on the retained message; -W only bounds a broken run
            ["mosquitto_sub", "-p", str(broker.port), "-t", Topics(FED).model, "-C", "1", "-W", "30", "-N"],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        body = msgpack.unpackb(out, raw=False)  # plain msgpack, no fedmq code
        documented = {"v", "t", "federation", "version", "round_id", "layout", "encoding", "weights",
                      "sha256", "created_at", "base_version", "signature"}  # fmt: skip
        assert set(body) == documented
        assert body["t"] == "model" and body["version"] == 1
        assert hashlib.sha256(body["weights"]).digest() == body["sha256"]
        if encoding == "f32":
            assert body["encoding"] == "f32"
            weights = np.frombuffer(body["weights"], "<f4")
        else:
            assert body["encoding"] == "compact"
            weights = decode_compact_with_stock_libraries(body["weights"])
            assert len(body["weights"]) < 0.6 * 4 * weights.size  # at least ~2x smaller than float32
        np.testing.assert_array_equal(weights, agg.published_weights)
        unsigned = msgpack.packb({**body, "signature": b""}, use_bin_type=True)
        nacl.signing.VerifyKey(agg.verify_key).verify(unsigned, body["signature"])


async def test_bad_inputs_change_nothing_and_are_logged(broker, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    enrolled = frozenset({"good-1", "good-2", "good-3"})
    cfg = agg_config(
        broker,
        tmp_path,
        enrolled=enrolled,
        min_clients=2,
        target_clients=3,
        round_window_s=3.0,
        max_update_bytes=100_000,
    )
    topics = Topics(FED)
    async with (
        Aggregator(cfg, initial=initial_snapshot()) as agg,
        MqttConnection(mqtt_config(broker, "tester")) as conn,
    ):
        # Connected before round 0 opens: every message must land inside its 3 s window, so none of
        # that window may go on a connect.
        await conn.wait_connected(timeout=30)
        run = asyncio.create_task(agg.run(1))
        await eventually(lambda: agg._round is not None, 30, what="round 0 open")
        dim = agg.layout.dim
        rng = np.random.default_rng(0)

        def update(sender, round_id=0, base=0, n=10, delta=None):
            delta = rng.normal(size=dim).astype("<f4") if delta is None else delta
            return delta, encode(ModelUpdate(round_id, sender, base, n, "f32", dim, delta.tobytes()))

        d1, good1 = update("good-1", n=10)
        d2, good2 = update("good-2", n=30)
        _, wrong_round = update("good-3", round_id=5)
        _, wrong_base = update("good-3", base=7)
        _, stranger = update("intruder")
        nan = np.full(dim, np.nan, "<f4")
        _, poisoned = update("good-3", delta=nan)
        send = conn.publish
        await send(topics.round_msg(0, UPDATE, "good-3"), b"\x93garbage")  # malformed
        await send(topics.round_msg(0, UPDATE, "good-3"), b"\0" * 200_000)  # oversized
        await send(topics.round_msg(5, UPDATE, "good-3"), wrong_round)  # wrong round
        await send(topics.round_msg(0, UPDATE, "good-3"), wrong_base)  # wrong base version
        await send(topics.round_msg(0, UPDATE, "intruder"), stranger)  # unknown sender
        await send(topics.round_msg(0, UPDATE, "good-3"), poisoned)  # NaN
        await send(topics.round_msg(0, UPDATE, "good-2"), good1)  # topic/sender mismatch
        await send(topics.round_msg(0, UPDATE, "good-1"), good1)
        await send(topics.round_msg(0, UPDATE, "good-1"), good1)  # duplicate
        await send(topics.round_msg(0, UPDATE, "good-2"), good2)
        before = agg.weights.copy()
        results = await asyncio.wait_for(run, timeout=30)
        assert len(agg.store.frames(0)) == 2  # only the two good updates were journaled
    assert results[0].status == "closed" and results[0].contributors == 2
    expected = before + ((10 * d1.astype(np.float64) + 30 * d2) / 40).astype(np.float32)
    np.testing.assert_allclose(agg.weights, expected, rtol=0, atol=1e-6)
    reasons = " | ".join(reason for _, reason in agg.dropped)
    for needle in [
        "not valid msgpack",
        "oversized",
        "round 5",
        "built on v7",
        "unknown sender",
        "NaN",
        "do not match its topic",
    ]:
        assert needle in reasons, (needle, reasons)
    # Every refusal is counted per sender and rule; lines are rate-limited to one per (sender, rule).
    assert agg.offences.total >= 7
    lines = sum(r.getMessage().startswith("offence from=") for r in caplog.records)
    assert 1 <= lines <= len(agg.offences.counts)
