"""Chunked uploads resume end to end: the aggregator's receipts (aggregator/receipts.py) say which chunks
it holds, and the device's re-send (edge_client/delivery.py) skips those. Real chunking and wire codec;
the broker is a list."""

from __future__ import annotations

import os

from aggregator.receipts import Receipts, receipt_of
from edge_client.delivery import MAX_RECEIPT_RESENDS, DeliveringOutbox
from shared.chunking import Reassembler, split
from shared.topics import UPDATE, Topics
from shared.wire import ChunkReceipt, ModelUpdate, decode, encode

TOPICS = Topics("f")
DEV = "dev-1"


class Wire:
    """Records every publication; ``lose`` drops those whose topic ends with one of its suffixes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.lose: set[str] = set()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False, expiry_s=None) -> None:
        if not any(topic.endswith(s) for s in self.lose):
            self.sent.append((topic, payload))


def update(size: int = 40_000) -> ModelUpdate:
    dim = size // 4
    return ModelUpdate(0, DEV, 0, 10, "f32", dim, os.urandom(4 * dim))


class Aggregator:
    """The aggregator's side of it: a reassembler keyed as the plain round keys it, and its receipts."""

    def __init__(self) -> None:
        self.reassembler = Reassembler()
        self.receipts = Receipts(every=4)
        self.got: list[ModelUpdate] = []
        self.issued: list[ChunkReceipt] = []

    def take(self, wire: Wire) -> None:
        for topic, payload in wire.sent:
            parsed = TOPICS.parse_round(topic)
            msg = self.reassembler.feed(f"{parsed.round_id}/{parsed.sender}", parsed.chunk, payload, 1 << 24)
            if msg is not None:
                self.got.append(msg)
            receipt = self.receipts.after_frame(self.reassembler)
            if receipt is not None:
                self.issued.append(decode(encode(receipt), ChunkReceipt))
        wire.sent.clear()


async def test_a_resend_skips_what_the_aggregator_holds_and_the_message_completes_once():
    wire, agg = Wire(), Aggregator()
    outbox = DeliveringOutbox(wire, TOPICS, DEV, chunk_limit=2048)
    msg = update()
    wire.lose = {f"/c/{i}" for i in range(14, 20)}  # a broker crash ate six acknowledged chunks
    frames = await outbox.update(msg, expiry_s=60)
    assert frames > 20
    agg.take(wire)
    assert agg.got == []
    nack = agg.issued[-1]  # the manifest came with chunks missing: the device is asked for them
    assert nack.manifest and not nack.complete and not nack.holds(14) and nack.holds(13)
    wire.lose = set()
    resend = outbox.on_receipt(nack)
    assert resend is not None
    await resend
    chunks = [TOPICS.parse_round(t).chunk for t, _ in wire.sent]
    assert chunks == [*range(14, 20), None]  # just the lost ones, then the manifest
    stats = outbox.deliveries.stats
    whole = len(encode(msg))
    assert 0 < stats.bytes_resent < whole / 3 and stats.bytes_skipped > whole / 2
    agg.take(wire)
    assert agg.got == [msg]  # reassembled once, bit for bit
    done = agg.issued[-1]
    assert done.complete
    assert outbox.on_receipt(done) is None
    entry = outbox.deliveries.get(0, UPDATE)
    assert entry is not None
    before = stats.bytes_resent
    await outbox.deliveries.resend(entry)  # a later cue (a reconnect): nothing left to send
    assert stats.bytes_resent == before and wire.sent == []


def test_receipts_every_few_chunks_on_a_gap_after_the_manifest_and_on_completion():
    agg = Aggregator()
    receipts = []
    payload = encode(update(20_000))
    frames = split(payload, 1024)
    for frame in frames[1:]:
        agg.reassembler.feed("0/dev-1", frame.chunk, frame.payload, 1 << 24)
        receipts.append(agg.receipts.after_frame(agg.reassembler))
    issued = [r for r in receipts if r is not None]
    assert len(issued) == (len(frames) - 1) // 4  # one per four chunks newly held
    assert all(not r.manifest and not r.complete for r in issued)
    agg.reassembler.feed("0/dev-1", None, frames[0].payload, 1 << 24)
    last = agg.receipts.after_frame(agg.reassembler)
    assert last is not None and last.complete
    agg.reassembler.feed("0/dev-1", None, frames[0].payload, 1 << 24)  # a duplicate manifest
    assert agg.receipts.after_frame(agg.reassembler) is None  # completion is confirmed once


def test_receipt_keys_name_round_kind_and_sender():
    state = (frozenset({0, 2}), False, False)
    plain = receipt_of("7/dev-1", b"t" * 16, state)
    secure = receipt_of("7/masked/dev-2", b"t" * 16, state)
    assert plain is not None and (plain.round_id, plain.kind, plain.sender) == (7, UPDATE, "dev-1")
    assert secure is not None and (secure.round_id, secure.kind, secure.sender) == (7, "masked", "dev-2")
    assert [i for i in range(4) if plain.holds(i)] == [0, 2]


async def test_receipt_driven_resends_are_bounded():
    wire = Wire()
    outbox = DeliveringOutbox(wire, TOPICS, DEV, chunk_limit=2048)
    msg = update()
    await outbox.update(msg, expiry_s=60)
    tid = next(decode(p) for t, p in wire.sent if TOPICS.parse_round(t).chunk is None).transfer_id
    nack = ChunkReceipt(0, UPDATE, DEV, tid, ChunkReceipt.bitmap([0]), manifest=True)
    runs = 0
    while (resend := outbox.on_receipt(nack)) is not None:
        await resend
        runs += 1
    assert runs == MAX_RECEIPT_RESENDS
