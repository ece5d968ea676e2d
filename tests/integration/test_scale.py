"""The scale path (issue 16, parts 4-5): light devices through a real broker and the real aggregator,
and masked-input sums spread over worker processes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.partial_sums import MaskedSum, MqttSummer, ShardedMaskedSum, partition_of
from aggregator.secure import PhaseWindows
from shared.codec import pack
from shared.errors import SecAggError
from shared.layout import ModelLayout
from shared.mqtt import MqttConnection
from shared.secagg import keys
from shared.snapshots import make_snapshot
from shared.wire import encode
from shared.wire.secagg import MaskedInput
from simulator.light import LightDevice, device_key, device_name, rotation_joins
from tests.support import eventually, mqtt_config

FED = "scale"


async def test_light_devices_close_secure_rounds_with_the_exact_sum(broker, tmp_path):
    n, cohort, dim = 10, 6, 500
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(n)}
    layout = ModelLayout.from_shapes([("w", [dim])])
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        windows=PhaseWindows(keys=60, shares=60, masked=60, unmask=60),
        target_clients=cohort,
        min_clients=cohort,
        over_selection=1.0,
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, layout, np.zeros(dim, np.float32))) as agg:
        async with contextlib.AsyncExitStack() as stack:
            devices = []
            for i in range(n):
                device = LightDevice(
                    federation=FED,
                    identity=device_key(i),
                    aggregator_key=agg.verify_key,
                    directory=directory,
                    mqtt=mqtt_config(broker, device_name(i)),
                    dim=dim,
                    joins=rotation_joins(i, n, cohort),
                    seed=i,
                    keep_encoded=True,
                )
                devices.append(await stack.enter_async_context(device))
            await asyncio.gather(*(d.conn.wait_connected(timeout=30) for d in devices))
            results = await asyncio.wait_for(agg.run(2), 240)
            secure = agg.last_secure
    assert [r.status for r in results] == ["closed", "closed"], [r.reason for r in results]
    assert [r.contributors for r in results] == [cohort, cohort]
    # Round 1 is joined by devices 6..9 and 0..1 (the rotation); its unmasked sum is their encodings' sum.
    joined = [d for d in devices if 1 in d.encoded]
    assert sorted(d.client_id for d in joined) == [device_name(i) for i in (0, 1, 6, 7, 8, 9)]
    assert secure is not None and secure.total is not None and secure.config is not None
    expected = np.zeros_like(secure.total)
    for device in joined:
        np.add(expected, device.encoded[1], out=expected)
    expected &= np.uint32((1 << secure.config.bits) - 1)
    np.testing.assert_array_equal(secure.total, expected)  # bit-exact
    for device in devices:
        assert device.stats.faults == 0
        assert device.stats.rounds_joined == device.stats.rounds_revealed == len(device.encoded)
        if device.stats.rounds_joined:
            assert device.stats.bytes_in["roster"] > 0 and device.stats.bytes_in["inbox"] > 0
            # the compact roster: the neighbours' signed adverts came through the inbox
            assert device.stats.bytes_in["neighbours"] > 0
            assert device.stats.bytes_out["masked"] >= 2 * dim  # 16-bit coordinates


def _signed_inputs(count: int, length: int, bits: int, seed: int = 0) -> list[tuple[str, bytes, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        vector = rng.integers(0, 1 << bits, length, dtype=np.uint32)
        unsigned = MaskedInput(FED, 3, device_name(i), pack(vector, bits), bits, length)
        signed = replace(unsigned, signature=keys.sign(device_key(i), unsigned.signed_bytes()))
        out.append((device_name(i), encode(signed), vector))
    return out


def test_sharded_sum_equals_the_single_process_sum_bit_exactly():
    bits, length, count = 16, 3000, 12
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(count)}
    inputs = _signed_inputs(count, length, bits)
    settings = {"federation": FED, "round_id": 3, "directory": directory, "bits": bits, "length": length}
    single = MaskedSum(**settings)
    for _, data, _ in inputs:
        assert single.add(data)
    assert not single.add(inputs[0][1])  # a duplicate (QoS 1 redelivery) is not added twice
    expected = sum(v.astype(np.uint64) for _, _, v in inputs) % (1 << bits)
    np.testing.assert_array_equal(single.sum & np.uint32((1 << bits) - 1), expected.astype(np.uint32))
    assert len({partition_of(d, 3) for d, _, _ in inputs}) == 3  # every worker gets some devices
    with ShardedMaskedSum(workers=3, **settings) as sharded:
        for device, data, _ in inputs:
            sharded.submit(device, data)
        sharded.submit(inputs[1][0], inputs[1][1])  # duplicate again, through a worker
        total, devices = sharded.finish()
    np.testing.assert_array_equal(total, expected.astype(np.uint32))
    assert devices == frozenset(d for d, _, _ in inputs) and sharded.refused == []


def test_workers_refuse_forged_and_misrouted_inputs_and_keep_summing():
    bits, length = 12, 400
    inputs = _signed_inputs(4, length, bits, seed=1)
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(4)}
    settings = {"federation": FED, "round_id": 3, "directory": directory, "bits": bits, "length": length}
    forged = bytearray(inputs[0][1])
    forged[-70] ^= 1  # inside the signature or payload: either way the signature no longer holds
    single = MaskedSum(**settings)
    with pytest.raises(SecAggError):
        single.add(bytes(forged))
    with pytest.raises(SecAggError, match="misrouted"):
        MaskedSum(**{**settings, "round_id": 4}).add(inputs[1][1])
    with ShardedMaskedSum(workers=2, **settings) as sharded:
        sharded.submit(inputs[0][0], bytes(forged))
        sharded.submit("d99999", b"\x00not msgpack")
        for device, data, _ in inputs[1:]:
            sharded.submit(device, data)
        total, devices = sharded.finish()
    assert devices == frozenset(d for d, _, _ in inputs[1:])
    assert len(sharded.refused) == 2
    expected = sum(v.astype(np.uint64) for _, _, v in inputs[1:]) % (1 << bits)
    np.testing.assert_array_equal(total, expected.astype(np.uint32))


def test_sharded_sum_needs_a_worker():
    with pytest.raises(SecAggError):
        ShardedMaskedSum(workers=0, federation=FED, round_id=0, directory={}, bits=8, length=1)




async def test_summers_on_a_shared_subscription_split_the_intake_and_sum_exactly(broker):
    bits, length, count = 16, 2000, 16
    inputs = _signed_inputs(count, length, bits, seed=2)
    directory = {device_name(i): bytes(device_key(i).verify_key) for i in range(count)}
    settings = {"federation": FED, "round_id": 3, "directory": directory, "bits": bits, "length": length}
    summers = [
        MqttSummer(mqtt_config(broker, f"summer{i}"), f"fl/{FED}/r/3/masked/+", group="sum",
                   total=MaskedSum(**settings))
        for i in range(2)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in summers]
    try:
        for summer in summers:  # connected means subscribed: MqttConnection waits for the SUBACK first
            await summer.conn.wait_connected(timeout=30)
        async with MqttConnection(mqtt_config(broker, "publisher")) as conn:
            await conn.wait_connected(timeout=30)
            for device, data, _ in inputs:
                await conn.publish(f"fl/{FED}/r/3/masked/{device}", data)
            await conn.publish(f"fl/{FED}/r/3/masked/forger", b"\x00not a message")
            await eventually(lambda: sum(s.received for s in summers) == count + 1, timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert all(s.total.devices for s in summers)  # the broker gave each worker a share
    assert sum(len(s.refused) for s in summers) == 1
    combined = (summers[0].total.sum + summers[1].total.sum) & np.uint32((1 << bits) - 1)
    expected = sum(v.astype(np.uint64) for _, _, v in inputs) % (1 << bits)
    np.testing.assert_array_equal(combined, expected.astype(np.uint32))
