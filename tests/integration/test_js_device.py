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

import pytest

from aggregator.engine import Aggregator
from shared.wire.secagg import PHASE_SHARED, SurvivorList
from simulator.broker import MosquittoBroker
from simulator.faultproxy import FaultProxy
from simulator.js_devices import RUNNERS
from tests.integration.js_support import (
    FED,
    aggregator_config,
    assert_exact_sum,
    captured,
    js_config,
    js_device,
    python_devices,
)
from tests.support import enrol, eventually, initial_snapshot, mqtt_config, mqtt_url_config, run_rounds

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("runner", sorted(RUNNERS))
async def test_js_device_closes_secure_rounds_with_python_devices_after_a_forced_disconnect(
    tmp_path, digits, runner
):
    broker = MosquittoBroker(tmp_path / "broker", websockets=True).start()
    keys = enrol(4)
    js_id = "dev-03"
    cfg = aggregator_config(tmp_path, mqtt_config(broker, "aggregator"), keys)
    try:
        async with Aggregator(cfg, initial=initial_snapshot(FED)) as agg:
            devices = python_devices(broker, digits, keys, js_id, agg)
            config = js_config(
                broker, digits, keys, js_id, agg, tmp_path,
                rounds=2,
                # An hour fast, too: its round deadlines live on its monotonic clock (src/timing.js).
                faults={"disconnect_after": "shares", "disconnect_during": "masked", "offline_ms": 2000,
                        "clock_skew_s": 3600},
                chunk_limit=2048,  # the masked input (~9.6 KB) travels as 5 chunks and a manifest
            )  # fmt: skip
            async with js_device(runner, config, tmp_path / "js") as js:
                rounds: list[dict] = []

                async def capture() -> None:
                    rounds.append(captured(agg, devices))

                results = await run_rounds(agg, devices, 2, timeout=300, between=capture)
                code = await js.wait(timeout_s=120)  # it leaves by itself after its two rounds
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
    for round_id, capture in enumerate(rounds):
        assert_exact_sum(capture, js_rounds[round_id]["encoded"])
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
    agg_link = FaultProxy(broker.port)
    await agg_link.start()
    cfg = aggregator_config(tmp_path, mqtt_url_config(agg_link.url, "aggregator"), keys, masked=60)
    cut: list[str] = []
    try:
        async with Aggregator(cfg, initial=initial_snapshot(FED)) as agg:

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
            devices = python_devices(broker, digits, keys, js_id, agg)
            config = js_config(broker, digits, keys, js_id, agg, tmp_path, chunk_limit=2048)
            async with js_device("node", config, tmp_path / "js") as js:
                rounds: list[dict] = []

                async def crash_when_acknowledged() -> None:
                    acked = "masked input acknowledged"
                    await eventually(lambda: any(acked in line for line in js.stderr), 120, what=acked)
                    broker.kill()  # the queued rest of the upload is gone
                    await asyncio.sleep(0.3)
                    broker.start()
                    agg_link.refuse(False)

                async def capture() -> None:
                    rounds.append(captured(agg, devices))

                crash = asyncio.create_task(crash_when_acknowledged())
                results = await run_rounds(agg, devices, 1, timeout=300, between=capture)
                await crash
                code = await js.wait(timeout_s=120)
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
    assert_exact_sum(rounds[0], report["rounds"][0]["encoded"])
