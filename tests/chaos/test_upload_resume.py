"""A chunked upload on a throttled link, cut mid-way by a broker SIGKILL (shipped persistence) or a link
drop: the device resumes from what the aggregator confirms it holds (``aggregator/receipts.py``), so it
re-sends less than the whole message, and the contribution is counted exactly once."""

from __future__ import annotations

import asyncio

import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from shared.wire import encode
from simulator.chaos import ShippedMosquitto
from simulator.faultproxy import FaultProxy
from simulator.harness import running
from tests.chaos.helpers import FED, link_config, versions_ok
from tests.support import eventually, initial_snapshot, make_devices

pytestmark = pytest.mark.broker
CHUNK_LIMIT = 1024  # a 19 KB update in 21 chunks
RATE = 2000  # bytes per second on the victim's link, each way


@pytest.fixture
def shipped(tmp_path):
    broker = ShippedMosquitto(tmp_path / "broker").start()
    yield broker
    broker.close()


@pytest.mark.parametrize("fault", ["broker-kill", "link-drop"])
async def test_a_cut_chunked_upload_resumes_and_counts_once(shipped, tmp_path, digits, fault):
    """broker-kill: the aggregator's own link goes down mid-upload, the broker queues the next chunks for
    it, then dies before its autosave (losing them, acknowledged as they were); link-drop: the device's
    link is reset mid-upload."""
    n = 2
    async with FaultProxy(shipped.port) as link, FaultProxy(shipped.port) as agg_link:
        cfg = AggregatorConfig(federation=FED, mqtt=link_config(agg_link.url, "aggregator"),
                               store_dir=tmp_path / "agg", mode="plain", round_window_s=180.0, min_clients=n,
                               target_clients=n, snapshot_encoding="f32")  # fmt: skip
        async with Aggregator(cfg, initial=initial_snapshot(FED)) as agg:
            devices = make_devices(shipped, digits, n, agg.verify_key, FED, chunk_limit=CHUNK_LIMIT,
                                   url_for=lambda i: link.url if i == 0 else shipped.url)  # fmt: skip
            victim = devices[0]
            chunks_in: list[str] = []
            agg.intake_hooks.append(
                lambda topic, _: chunks_in.append(topic) if f"/{victim.client_id}/c/" in topic else None
            )
            async with running(devices):
                await agg._publish_snapshot()  # as run() does first: the snapshot comes at full speed
                await asyncio.gather(*(d.wait_for_version(0, 60) for d in devices))
                link.throttle(RATE)  # then the victim's link slows to a crawl
                run = asyncio.create_task(agg.run(1))
                await eventually(lambda: len(chunks_in) >= 8, 120, what="the victim's upload under way")
                if fault == "broker-kill":
                    agg_link.refuse(True)
                    agg_link.drop()
                    sent = link.bytes_up
                    more = sent + 6 * CHUNK_LIMIT  # six more chunks, queued for the aggregator
                    await eventually(lambda: link.bytes_up > more, 60, what="queued chunks")
                    shipped.kill()  # the chunks queued for the aggregator are lost with it
                    # ... whenever the shipped 30 s autosave last ran: a save between their PUBACKs
                    # and the kill would have kept them (and nothing would need re-sending).
                    (shipped.data_dir / "mosquitto.db").unlink(missing_ok=True)
                    await asyncio.sleep(0.3)
                    shipped.start()
                    agg_link.refuse(False)
                else:
                    assert link.drop() == 1
                results = await asyncio.wait_for(run, 150)
            assert versions_ok(agg) == []
    stats = victim.outbox.deliveries.stats
    total = sum(d.trainer.labels.shape[0] for d in devices)
    assert [(r.status, r.contributors) for r in results] == [("closed", n)]
    assert results[0].metrics["total_weight"] == total  # each device's examples counted exactly once
    whole = len(encode_update_size(victim))
    assert stats.bytes_resent < whole  # resumed: less than the whole message went again
    if fault == "broker-kill":
        assert victim.conn.stats.connects >= 2 and stats.bytes_resent > 0  # the lost chunks did go again
    print(f"{fault}: re-sent {stats.bytes_resent} of {whole} B, skipped {stats.bytes_skipped} B, "
          f"{stats.resent} re-sends, receipts {agg.receipts.sent}")  # fmt: skip


def encode_update_size(device) -> bytes:
    """A stand-in update of the device's size (the real one's encoding has the same length)."""
    from shared.wire import ModelUpdate

    dim = device.trainer.model.dim
    metrics = {"loss": 0.0, "train_s": 0.0}
    return encode(ModelUpdate(0, device.client_id, 0, 1, "f32", dim, bytes(4 * dim), metrics))
