"""A JavaScript device (clients/js, MQTT over WebSockets) in secure rounds with Python devices.

Twice: in Node (``bin/device.js``) and inside headless Chromium (``bin/browser-device.js``: the bundled
client runs in a real page, libsodium in WebAssembly). The JS device joins through Mosquitto's websockets
listener. In the first round it loses its link twice (no DISCONNECT, as a dead cellular link would): once
after sending its shares, and once in the middle of its chunked masked-input upload; each time it comes
back on its persistent session, the upload resumes, and it still contributes. Each round's unmasked sum
must equal, bit for bit, the sum of the four devices' encoded vectors (the Python devices keep theirs; the
JS device reports its own).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient, EdgeConfig
from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.codec import CodecConfig
from shared.snapshots import make_snapshot
from shared.wire.secagg import PHASE_SHARED, SurvivorList
from simulator.broker import MosquittoBroker
from simulator.data import dirichlet_partition
from simulator.faultproxy import FaultProxy
from simulator.js_devices import RUNNERS, JsDevice, device_config
from simulator.models import digits_mlp
from tests.support import (
    directory_of,
    enrol,
    eventually,
    initial_weights,
    mqtt_config,
    mqtt_url_config,
    run_rounds,
)

pytestmark = pytest.mark.broker
FED = "mixed"


def python_secure_devices(broker, digits, keys, shards, skip: str, aggregator_key: bytes) -> list[EdgeClient]:
    directory = directory_of(keys)
    devices = []
    for i, (cid, key) in enumerate(keys.items()):
        if cid == skip:
            continue
        trainer = LocalTrainer(
            FederatedModel(digits_mlp()),
            torch.from_numpy(digits.x_train[shards[i]]),
            torch.from_numpy(digits.y_train[shards[i]]),
            TrainConfig(epochs=1, lr=0.1),
        )
        config = EdgeConfig(FED, mqtt_config(broker, cid), aggregator_key, identity=key, directory=directory)
        device = EdgeClient(config, trainer)
        device.keep_encoded = True
        devices.append(device)
    return devices


@pytest.mark.parametrize("runner", sorted(RUNNERS))
async def test_js_device_closes_secure_rounds_with_python_devices_after_a_forced_disconnect(
    tmp_path, digits, runner
):
    broker = MosquittoBroker(tmp_path / "broker", websockets=True).start()
    keys = enrol(4)
    js_id = "dev-03"
    directory = directory_of(keys)
    shards = dirichlet_partition(digits.y_train, 4, alpha=0.5, seed=0)
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=30, shares=30, masked=40, unmask=30),
        min_clients=4,
        target_clients=4,
    )
    try:
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
            python_devices = python_secure_devices(broker, digits, keys, shards, js_id, agg.verify_key)
            config = device_config(
                ws_url=broker.ws_url,
                federation=FED,
                device=js_id,
                identity=keys[js_id],
                aggregator_key=agg.verify_key,
                directory=directory,
                features=digits.x_train[shards[3]],
                labels=digits.y_train[shards[3]],
                rounds=2,
                timeout_s=240,
                report=tmp_path / "js-report.json",
                train={"epochs": 1, "lr": 0.1},
                # An hour fast, too: its round deadlines live on its monotonic clock (src/timing.js).
                faults={"disconnect_after": "shares", "disconnect_during": "masked", "offline_ms": 2000,
                        "clock_skew_s": 3600},
                chunk_limit=2048,  # the masked input (~9.6 KB) travels as 5 chunks and a manifest
            )
            js = await JsDevice.start(runner, config, tmp_path / "js")
            try:
                rounds: list[dict] = []

                async def capture() -> None:
                    secure = agg.last_secure
                    rounds.append(
                        {
                            "total": None if secure.total is None else secure.total.copy(),
                            "bits": secure.config.bits,
                            "python": [d.secure_round.encoded.copy() for d in python_devices],
                        }
                    )

                results = await run_rounds(agg, python_devices, 2, timeout=300, between=capture)
                code = await js.wait(timeout_s=120)  # it leaves by itself after its two rounds
            finally:
                await js.kill()
    finally:
        broker.stop()
    stderr = "\n".join(js.stderr)
    assert code == 0, js.log_tail()
    report = js.report()
    assert [r.status for r in results] == ["closed", "closed"], [r.reason for r in results]
    assert all(r.contributors == 4 for r in results)
    assert report["reconnects"] >= 2, "the forced disconnects did not happen"
    assert stderr.count("forced disconnect") == 2
    assert "wall clock set 3600 s off" in stderr
    js_rounds = {r["round"]: r for r in report["rounds"]}
    for round_id, captured in enumerate(rounds):
        js_encoded = np.array(js_rounds[round_id]["encoded"], dtype=np.uint64)
        expected = sum((v.astype(np.uint64) for v in captured["python"]), js_encoded)
        expected &= np.uint64((1 << captured["bits"]) - 1)
        np.testing.assert_array_equal(captured["total"], expected.astype(np.uint32))  # bit-exact
    assert report["version"] == 2  # the JS device followed both new snapshots
    if runner == "browser":
        assert "HeadlessChrome" in report["user_agent"]


async def test_js_device_re_sends_a_masked_input_the_broker_lost_in_a_crash(tmp_path, digits):
    """The JS delivery ledger (clients/js/src/delivery.js): the aggregator goes offline the moment it has
    opened the masked phase, so every masked input (the JS device's chunked one too) is queued at the
    broker, and the broker is SIGKILLed before it saves anything. The JS device got its PUBACKs, so only its
    ledger can bring the input back: the round must still close with all four, bit-exact.

    The link is cut when the U2 notice is out, not when the JS device's first chunk reaches the intake: by
    then the aggregator's MQTT client may already hold the whole upload, and no re-send would be needed."""
    # No autosave: the SIGKILL loses every queued chunk, whenever it comes (a save between the PUBACKs and
    # the kill would keep them, and the round would close without the ledger).
    broker = MosquittoBroker(tmp_path / "broker", websockets=True, autosave_interval_s=0).start()
    keys = enrol(4)
    js_id = "dev-03"
    directory = directory_of(keys)
    shards = dirichlet_partition(digits.y_train, 4, alpha=0.5, seed=0)
    model, weights = initial_weights()
    agg_link = FaultProxy(broker.port)
    await agg_link.start()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_url_config(agg_link.url, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=30, shares=30, masked=60, unmask=30),
        min_clients=4,
        target_clients=4,
    )
    cut: list[str] = []
    try:
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:

            publish_notice = agg._outbox.notice
            early: list[str] = []

            async def offline_once_the_masked_phase_opens(notice) -> None:
                await publish_notice(notice)
                if isinstance(notice, SurvivorList) and notice.phase == PHASE_SHARED and not cut:
                    agg_link.refuse(True)  # the aggregator's link dies before any masked input can reach it
                    agg_link.drop()
                    cut.append(notice.phase)

            agg._outbox.notice = offline_once_the_masked_phase_opens  # type: ignore[method-assign]
            agg.intake_hooks.append(
                lambda topic, _: early.append(topic) if f"/masked/{js_id}" in topic and not cut else None
            )
            python_devices = python_secure_devices(broker, digits, keys, shards, js_id, agg.verify_key)
            config = device_config(
                ws_url=broker.ws_url, federation=FED, device=js_id, identity=keys[js_id],
                aggregator_key=agg.verify_key, directory=directory, features=digits.x_train[shards[3]],
                labels=digits.y_train[shards[3]], rounds=1, timeout_s=240, report=tmp_path / "js-report.json",
                train={"epochs": 1, "lr": 0.1}, chunk_limit=2048,
            )  # fmt: skip
            js = await JsDevice.start("node", config, tmp_path / "js")
            try:
                rounds: list[dict] = []

                async def crash_when_acknowledged() -> None:
                    acked = "masked input acknowledged"
                    await eventually(lambda: any(acked in line for line in js.stderr), 120, what=acked)
                    broker.kill()  # the queued rest of the upload is gone
                    await asyncio.sleep(0.3)
                    broker.start()
                    agg_link.refuse(False)

                async def capture() -> None:
                    secure = agg.last_secure
                    python = [d.secure_round.encoded.copy() for d in python_devices]
                    total = None if secure.total is None else secure.total.copy()
                    rounds.append({"total": total, "bits": secure.config.bits, "python": python})

                crash = asyncio.create_task(crash_when_acknowledged())
                results = await run_rounds(agg, python_devices, 1, timeout=300, between=capture)
                await crash
                code = await js.wait(timeout_s=120)
            finally:
                await js.kill()
    finally:
        await agg_link.close()
        broker.stop()
    assert cut, "the aggregator's link was never cut in the masked phase"
    assert not early, early  # nothing of the JS upload got through before the cut
    assert code == 0, js.log_tail()
    report = js.report()
    assert [(r.status, r.contributors) for r in results] == [("closed", 4)], [r.reason for r in results]
    assert report["deliveries"]["resent"] >= 1  # the JS device's ledger brought the input back
    # The aggregator re-published the open phase (inbox batches too) after reconnecting: skipped, not refused.
    assert not [line for line in js.stderr if "share phase closed" in line], js.log_tail()
    js_encoded = np.array(report["rounds"][0]["encoded"], dtype=np.uint64)
    expected = sum((v.astype(np.uint64) for v in rounds[0]["python"]), js_encoded)
    expected &= np.uint64((1 << rounds[0]["bits"]) - 1)
    np.testing.assert_array_equal(rounds[0]["total"], expected.astype(np.uint32))  # bit-exact
