"""The publishing seam: topics, chunk order, retain and expiry rules, over an in-memory transport."""

from __future__ import annotations

import asyncio

from shared.chunking import Reassembler
from shared.outbox import ANNOUNCE_GRACE_S, Outbox
from shared.plan import RoundPlan
from shared.topics import Topics
from shared.wire import PHASE_COLLECT, ChunkManifest, RoundAnnounce, RoundResult, decode
from shared.wire.secagg import ShareBatch

TOPICS = Topics("fed")


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool, float | None]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                      expiry_s: float | None = None) -> None:  # fmt: skip
        self.sent.append((topic, payload, retain, expiry_s))


def test_a_large_snapshot_goes_out_as_retained_chunks_then_its_manifest():
    wire = Recorder()
    payload = bytes(range(256)) * 40  # 10,240 bytes at a 2,048-byte limit
    asyncio.run(Outbox(wire, TOPICS, chunk_limit=2048).snapshot(payload))
    topics = [t for t, _, _, _ in wire.sent]
    assert topics[-1] == TOPICS.model and all(t.startswith(f"{TOPICS.model}/c/") for t in topics[:-1])
    assert all(retain for _, _, retain, _ in wire.sent)
    assert isinstance(decode(wire.sent[-1][1]), ChunkManifest)
    reassembler = Reassembler()
    assembled = None
    for _, frame, _, _ in wire.sent:  # chunks first, so the manifest completes the transfer
        msg = decode(frame)
        add = reassembler.add_manifest if isinstance(msg, ChunkManifest) else reassembler.add_chunk
        assembled = add("m", msg)  # type: ignore[arg-type]
    assert assembled == payload


def test_announcements_expire_after_their_deadline_and_results_are_retained():
    wire = Recorder()
    outbox = Outbox(wire, TOPICS)
    announce = RoundAnnounce(federation="fed", round_id=4, base_version=2, phase=PHASE_COLLECT,
                             opened_at=100.0, deadline=130.0, min_clients=1, target_clients=2,
                             plan=RoundPlan())  # fmt: skip
    asyncio.run(outbox.announce(announce, now=110.0))
    asyncio.run(outbox.result(RoundResult(4, "closed", 3, 2)))
    (topic, payload, retain, expiry), (rtopic, _, rretain, rexpiry) = wire.sent
    assert (topic, retain, expiry) == (TOPICS.round, True, 20.0 + ANNOUNCE_GRACE_S)
    assert decode(payload, RoundAnnounce) == announce
    assert (rtopic, rretain, rexpiry) == (TOPICS.result, True, None)


def test_inbox_batches_are_addressed_and_not_retained():
    wire = Recorder()
    batch = ShareBatch("fed", 4, "dev-2", {"dev-1": b"\x01" * 82})
    asyncio.run(Outbox(wire, TOPICS).inbox("dev-2", batch))
    assert [(t, r) for t, _, r, _ in wire.sent] == [(TOPICS.inbox("dev-2"), False)]
