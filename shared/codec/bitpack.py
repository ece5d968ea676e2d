"""Pack integer vectors of Z_{2^b} at exactly ``b`` bits a coordinate (docs/protocol.md §4.6).

Bit order is little-endian throughout: coordinate ``i`` occupies bits ``[i*b, (i+1)*b)`` of the byte string
read as one little-endian integer, least significant bit first. This is the layout any device can produce
with shifts and masks, and it makes 8/16/32-bit packing identical to the plain little-endian array bytes.

The general path works on chunks of coordinates (a multiple of 8, so every chunk ends on a byte boundary)
and spreads each chunk into bits with :func:`numpy.unpackbits` / :func:`numpy.packbits`
(``bitorder="little"``). That costs 32 bytes of scratch per coordinate of the *chunk* only, so memory stays
bounded however long the vector is, and there is no per-coordinate Python loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.errors import CodecError

#: Coordinates handled per step on the general path (multiple of 8 so chunks end on a byte boundary).
CHUNK = 1 << 16

_NATIVE: dict[int, np.dtype[Any]] = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` coordinates take at ``bits`` bits: ``ceil(count * bits / 8)``."""
    _check_bits(bits)
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise CodecError(f"bit width must be an integer in 1..32, got {bits!r}")


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D uint32 vector whose entries lie in ``[0, 2^bits)`` into ``ceil(len*bits/8)`` bytes."""
    _check_bits(bits)
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype != np.uint32:
        raise CodecError(f"pack expects a 1-D uint32 vector, got {values.dtype} with shape {values.shape}")
    if bits < 32 and values.size and int(values.max()) >> bits:
        raise CodecError(f"value {int(values.max())} does not fit in {bits} bits")
    native = _NATIVE.get(bits)
    if native is not None:
        packed_native: bytes = values.astype(native, copy=False).tobytes()
        return packed_native
    count = values.size
    out = bytearray(packed_size(count, bits))
    for start in range(0, count, CHUNK):
        chunk = values[start : start + CHUNK]
        as_bytes = chunk.astype("<u4", copy=False).view(np.uint8).reshape(-1, 4)
        spread = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
        packed = np.packbits(spread.reshape(-1), bitorder="little")
        offset = start * bits // 8  # start is a multiple of 8, so this is exact
        out[offset : offset + packed.size] = packed.tobytes()
    return bytes(out)


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: read ``count`` coordinates of ``bits`` bits; the length must match exactly."""
    _check_bits(bits)
    if count < 0:
        raise CodecError(f"coordinate count must be non-negative, got {count}")
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise CodecError(f"{count} coordinates at {bits} bits take {expected} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    native = _NATIVE.get(bits)
    if native is not None:
        widened: np.ndarray = raw.view(native).astype(np.uint32)
        return widened
    # The unused high bits of the last byte must be zero, so that each vector has one encoding.
    if count and bits * count % 8 and int(raw[-1]) >> (bits * count % 8):
        raise CodecError("non-zero padding bits after the last coordinate")
    out = np.empty(count, dtype=np.uint32)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        offset = start * bits // 8
        chunk_bytes = raw[offset : offset + (n * bits + 7) // 8]
        spread = np.unpackbits(chunk_bytes, bitorder="little", count=n * bits).reshape(n, bits)
        full = np.zeros((n, 32), dtype=np.uint8)
        full[:, :bits] = spread
        out[start : start + n] = np.packbits(full, axis=1, bitorder="little").view("<u4").reshape(n)
    return out
