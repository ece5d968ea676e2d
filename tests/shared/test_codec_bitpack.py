"""Bit packing: exact round trip at every width 1..32, tight lengths, strict inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec.bitpack import CHUNK, pack, packed_size, unpack
from shared.errors import CodecError


@pytest.mark.parametrize("bits", range(1, 33))
@pytest.mark.parametrize("count", [0, 1, 7, 9, 1001, CHUNK + 13])
def test_round_trip_every_width(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 7919 + count)
    values = rng.integers(0, 1 << bits, count, dtype=np.uint64).astype(np.uint32)
    values[:1] = (1 << bits) - 1  # the extreme value is always present
    data = pack(values, bits)
    assert len(data) == (count * bits + 7) // 8 == packed_size(count, bits)
    assert np.array_equal(unpack(data, bits, count), values)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 32), values=st.lists(st.integers(0, 2**32 - 1), max_size=200))
def test_round_trip_property(bits: int, values: list[int]) -> None:
    array = np.array([v & ((1 << bits) - 1) for v in values], dtype=np.uint32)
    assert np.array_equal(unpack(pack(array, bits), bits, array.size), array)


def test_little_endian_bit_order() -> None:
    # coordinates 0b101 and 0b011 at 3 bits: bits 0..2 = 1,0,1 ; bits 3..5 = 1,1,0 -> 0b011101
    assert pack(np.array([0b101, 0b011], dtype=np.uint32), 3) == bytes([0b011101])
    assert pack(np.array([0x1234], dtype=np.uint32), 16) == b"\x34\x12"


def test_rejects_bad_inputs() -> None:
    with pytest.raises(CodecError):
        pack(np.array([8], dtype=np.uint32), 3)
    with pytest.raises(CodecError):
        pack(np.array([1], dtype=np.int64), 8)
    with pytest.raises(CodecError):
        pack(np.array([1], dtype=np.uint32), 0)
    with pytest.raises(CodecError):
        unpack(b"\x00\x00\x00", 12, 1)
    with pytest.raises(CodecError):
        unpack(b"\xf0", 3, 2)  # padding bits set
