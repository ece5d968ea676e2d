from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.chunking import Reassembler, split
from shared.errors import ChunkError, WireError
from shared.wire import Chunk, ModelUpdate, decode, encode


def _feed_all(frames, order, reassembler, key="k"):
    out = []
    for i in order:
        frame = frames[i]
        result = reassembler.feed(key, frame.chunk, frame.payload, max_bytes=1 << 20)
        if result is not None:
            out.append(result)
    return out


def _big_update(n: int) -> ModelUpdate:
    data = bytes(random.Random(n).getrandbits(8) for _ in range(4 * n))
    return ModelUpdate(1, "d", 0, 5, "f32", n, data)


def test_small_payload_is_one_frame():
    raw = encode(_big_update(10))
    frames = split(raw, 4096)
    assert len(frames) == 1 and frames[0].chunk is None and frames[0].payload == raw


@settings(max_examples=40, deadline=None)
@given(n=st.integers(300, 3000), limit=st.integers(200, 1000), seed=st.integers(0, 10_000))
def test_any_order_with_duplicates_reassembles_once_bit_exactly(n, limit, seed):
    msg = _big_update(n)
    frames = split(encode(msg), limit)
    assert all(len(f.payload) <= limit for f in frames)
    rng = random.Random(seed)
    order = list(range(len(frames))) * 2  # every frame twice
    rng.shuffle(order)
    out = _feed_all(frames, order, Reassembler())
    assert out == [msg]


def test_tampered_chunk_is_refused():
    frames = split(encode(_big_update(2000)), 1000)
    chunk = decode(frames[1].payload, Chunk)
    bad = Chunk(chunk.transfer_id, chunk.index, bytes(len(chunk.data)))
    frames[1] = type(frames[1])(frames[1].chunk, encode(bad))
    with pytest.raises(ChunkError, match="hash"):
        _feed_all(frames, range(len(frames)), Reassembler())


def test_chunk_index_must_match_topic():
    frames = split(encode(_big_update(2000)), 1000)
    with pytest.raises(ChunkError):
        Reassembler().feed("k", 5, frames[1].payload, 1 << 20)


def test_oversized_transfer_is_refused():
    frames = split(encode(_big_update(5000)), 1000)
    with pytest.raises(ChunkError, match="exceeds"):
        Reassembler(max_total=1000).feed("k", None, frames[0].payload, 1 << 20)


def test_garbage_chunk_raises_wire_error():
    with pytest.raises(WireError):
        Reassembler().feed("k", 0, b"\xc1garbage", 1 << 20)
