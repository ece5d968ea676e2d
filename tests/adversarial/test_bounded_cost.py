"""Bounded cost per sender: the decoder's object/nesting budget and per-owner reassembly quotas."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest

from shared.chunking import PART_COST, Reassembler, split
from shared.errors import ChunkError, WireError
from shared.wire import Chunk, ModelUpdate, decode, encode
from shared.wire.base import MAX_DEPTH, MAX_OBJECTS, unpack_map


def _many_empty_arrays(count: int, groups: int = 15) -> bytes:
    """The issue's payload: a map of huge arrays of one-byte empty arrays (1.35 MB, 1.35 million objects)."""
    inner = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    return bytes([0x80 | groups]) + b"".join(bytes([0xA1, 97 + i]) + inner for i in range(groups))


def test_millions_of_empty_arrays_are_refused_by_the_object_budget() -> None:
    payload = _many_empty_arrays(90_000)
    assert len(msgpack.unpackb(payload)) == 15  # plain msgpack builds all 1.35 million lists
    with pytest.raises(WireError, match=f"more than {MAX_OBJECTS} msgpack objects"):
        unpack_map(payload)


def test_deep_nesting_is_refused() -> None:
    payload = b"\x81\xa1a" + b"\x91" * (MAX_DEPTH + 1) + b"\xc0"
    with pytest.raises(WireError, match="nests deeper"):
        unpack_map(payload)
    ok = b"\x81\xa1a" + b"\x91" * (MAX_DEPTH - 1) + b"\xc0"
    assert isinstance(unpack_map(ok)["a"], list)


def test_budget_counts_map_items_too() -> None:
    body = {"a": [{"k": i} for i in range(60_000)]}
    with pytest.raises(WireError, match="msgpack objects"):
        unpack_map(msgpack.packb(body))
    assert len(unpack_map(msgpack.packb(body), max_objects=200_000)["a"]) == 60_000


def test_real_messages_fit_the_budget() -> None:
    msg = ModelUpdate(1, "d", 0, 5, "f32", 1000, bytes(4000), {f"m{i}": float(i) for i in range(100)})
    assert decode(encode(msg)) == msg


def _frames(sender: str, n: int, limit: int = 600):
    data = bytes(random.Random(n).getrandbits(8) for _ in range(n))
    return split(encode(ModelUpdate(1, sender, 0, 5, "f32", n // 4, data)), limit)


def test_one_owner_evicts_only_its_own_transfers() -> None:
    """A rogue opens many transfers and floods the pool; an honest sender's partial upload survives."""
    r = Reassembler(max_total=20_000, owner_transfers=3)
    honest = _frames("honest", 8_000)
    # the honest device sends its manifest and the first half of its chunks
    half = len(honest) // 2
    for frame in honest[:half]:
        assert r.feed("1/honest", frame.chunk, frame.payload, 1 << 20) is None
    for n in range(50):  # fifty distinct transfers, none finished (no manifest, one chunk each)
        chunk = Chunk(bytes([n]) * 16, 0, b"x" * 500)
        with contextlib.suppress(ChunkError):
            r.feed("1/rogue", 0, encode(chunk), 1 << 20)
    assert r.evicted["honest"] == 0 and r.evicted["rogue"] >= 47
    assert r.buffered_by("rogue") <= 3 * (500 + PART_COST)
    out = [r.feed("1/honest", f.chunk, f.payload, 1 << 20) for f in honest[half:]]
    assert next(m for m in out if m is not None).sender == "honest"


def test_zero_byte_chunks_are_charged() -> None:
    r = Reassembler(max_total=10_000, owner_transfers=1)
    refused = 0
    for i in range(1_000):
        try:
            r.feed("1/rogue", i, encode(Chunk(b"t" * 16, i, b"")), 1 << 20)
        except ChunkError:
            refused += 1
    assert r.buffered_by("rogue") <= r.owner_bytes
    assert refused > 0


def test_pool_pressure_evicts_the_largest_holder_first() -> None:
    r = Reassembler(max_total=10_000, owner_transfers=4, pool_bytes=12_000)
    honest = _frames("honest", 3_000)
    for frame in honest[:-1]:
        r.feed("1/honest", frame.chunk, frame.payload, 1 << 20)
    for n in range(4):
        for i in range(4):
            r.feed("1/rogue", i, encode(Chunk(bytes([n]) * 16, i, b"y" * 500)), 1 << 20)
    assert r.evicted["honest"] == 0
    assert r.feed("1/honest", honest[-1].chunk, honest[-1].payload, 1 << 20) is not None
