"""A plain round's intake without a broker: frames published through the real Outbox into a list, then
fed to :class:`aggregator.plain.PlainRound` as the engine's intake would."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from aggregator.accumulator import WeightedMean
from aggregator.plain import PlainRound
from shared.errors import ProtocolError, WireError
from shared.outbox import Outbox
from shared.plan import RoundPlan
from shared.topics import Topics
from shared.wire import PHASE_COLLECT, ModelUpdate, RoundAnnounce

FED = "fed"
DIM = 1000


class Recorder:
    """A transport that keeps what was published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool, float | None]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                      expiry_s: float | None = None) -> None:  # fmt: skip
        self.sent.append((topic, payload, retain, expiry_s))


def announce(target: int = 3) -> RoundAnnounce:
    return RoundAnnounce(federation=FED, round_id=2, base_version=5, phase=PHASE_COLLECT, opened_at=0.0,
                         deadline=1e12, min_clients=1, target_clients=target, plan=RoundPlan())  # fmt: skip


def update(sender: str, delta: np.ndarray, examples: int = 10, base: int = 5) -> ModelUpdate:
    data = np.ascontiguousarray(delta, "<f4").tobytes()
    return ModelUpdate(2, sender, base, examples, "f32", delta.size, data, {"loss": 1.0})


def frames(message: ModelUpdate, chunk_limit: int = 64 * 1024) -> list[tuple[str, bytes]]:
    recorder = Recorder()
    outbox = Outbox(recorder, Topics(FED), chunk_limit=chunk_limit)
    asyncio.run(outbox.update(message, expiry_s=30.0))
    assert all(not retain and expiry == 30.0 for _, _, retain, expiry in recorder.sent)
    return [(topic, payload) for topic, payload, _, _ in recorder.sent]


def feed(rnd: PlainRound, sent: list[tuple[str, bytes]], journal: list | None = None) -> None:
    topics = Topics(FED)
    for topic, payload in sent:
        record = None if journal is None else (lambda p, b: journal.append((p, b)) or True)
        rnd.ingest(topics.parse_round(topic), payload, record)


def test_updates_are_weighted_by_examples_and_the_target_closes_the_round():
    rnd = PlainRound(announce(target=2), WeightedMean(DIM), max_bytes=1 << 20)
    a, b = np.full(DIM, 1.0, np.float32), np.full(DIM, 4.0, np.float32)
    journal: list = []
    feed(rnd, frames(update("dev-a", a, examples=30)), journal)
    assert not rnd.full.is_set()
    feed(rnd, frames(update("dev-a", b)), journal)  # a duplicate sender is ignored, not journaled
    feed(rnd, frames(update("dev-b", b, examples=10)), journal)
    assert rnd.full.is_set() and rnd.contributors == {"dev-a", "dev-b"} and len(journal) == 2
    assert np.allclose(rnd.accumulator.mean(), (30 * 1.0 + 10 * 4.0) / 40)
    assert rnd.mean_metrics() == {"loss": 1.0}


def test_a_chunked_update_is_journaled_chunk_by_chunk_and_counted_once_whole():
    rnd = PlainRound(announce(), WeightedMean(DIM), max_bytes=1 << 20)
    delta = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    sent = frames(update("dev-c", delta), chunk_limit=1024)
    assert len(sent) > 3  # chunks then the manifest
    journal: list = []
    feed(rnd, sent[:-1], journal)
    assert rnd.contributors == set()  # the manifest (last) completes it
    feed(rnd, sent[-1:], journal)
    assert rnd.contributors == {"dev-c"} and len(journal) == len(sent)
    assert np.array_equal(rnd.accumulator.mean(), delta)


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (update("dev-d", np.zeros(DIM, np.float32), base=4), ProtocolError, "built on v4"),
        (update("dev-d", np.zeros(DIM - 1, np.float32)), WireError, "shape"),
        (update("dev-d", np.full(DIM, np.nan, np.float32)), WireError, "NaN"),
    ],
)
def test_bad_updates_are_typed_errors_and_change_nothing(message, error, match):
    rnd = PlainRound(announce(), WeightedMean(DIM), max_bytes=1 << 20)
    with pytest.raises(error, match=match):
        feed(rnd, frames(message), [])
    assert rnd.contributors == set() and rnd.accumulator.count == 0


def test_an_oversized_or_misrouted_frame_is_refused_before_decoding():
    rnd = PlainRound(announce(), WeightedMean(DIM), max_bytes=100)
    with pytest.raises(WireError, match="oversized"):
        feed(rnd, frames(update("dev-e", np.zeros(DIM, np.float32))), [])
    topics = Topics(FED)
    with pytest.raises(ProtocolError, match="round 3"):
        rnd.ingest(topics.parse_round(topics.round_msg(3, "update", "dev-e")), b"x", None)
    with pytest.raises(ProtocolError, match="kind"):
        rnd.ingest(topics.parse_round(topics.round_msg(2, "keys", "dev-e")), b"x", None)
