"""Mask expansion: seed -> pseudo-random vector in Z_{2^b}, streamed chunk by chunk.

The PRG is ChaCha20 through libsodium's ``randombytes_buf_deterministic`` with full 256-bit seeds
(Bonawitz et al. CCS 2017 §4 only asks for a secure PRG; Bell et al. CCS 2020 §5 measure that PRG
expansion dominates the server's cost, so it must run at memory speed).

Why chunks: a mask of ``d`` coordinates is cut into chunks of :data:`CHUNK_COORDS` coordinates, chunk
``i`` being expanded from its own seed ``BLAKE2b(key=seed, msg=i)``. So (1) any coordinate range can be
generated without generating what precedes it, which lets unmasking split across workers and lets a
device mask a vector that it streams, and (2) the working set of the combined-mask loop is one
cache-sized buffer per chunk, not ``n`` vectors of length ``d``.

Only the bytes the bit width needs are generated (1 a coordinate for b<=8, 2 for b<=16, 4 otherwise):
because 2^b divides 2^8, 2^16 and 2^32, uniform bytes reduced mod 2^b stay uniform, and sums in the
narrow dtype wrap consistently with arithmetic mod 2^b.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Literal

import nacl.bindings
import numpy as np

from shared.errors import CodecError

#: Coordinates per chunk: 64 Ki coordinates = 256 KiB at 32 bits, comfortably inside L2.
CHUNK_COORDS = 1 << 16
#: Below this many (seed x coordinate) expansions a pool costs more than it saves.
PARALLEL_MIN_WORK = 1 << 24
_CHUNK_PERSON = b"fedmq.sa.prg.v1"


def check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise CodecError(f"bit width must be an int in 1..32, got {bits!r}")


def modulus_mask(bits: int) -> np.uint32:
    """``2^b - 1`` as uint32: ``v & modulus_mask(b)`` reduces a uint32 vector mod 2^b."""
    check_bits(bits)
    mask: np.uint32 = np.uint32((1 << bits) - 1)
    return mask


def mask_dtype(bits: int) -> type[np.unsignedinteger]:
    """Narrowest unsigned dtype whose wraparound is compatible with Z_{2^b}."""
    check_bits(bits)
    if bits <= 8:
        return np.uint8
    if bits <= 16:
        return np.uint16
    return np.uint32


def chunk_seed(seed: bytes, chunk_index: int) -> bytes:
    """Seed of chunk ``chunk_index``: keyed BLAKE2b of the mask seed and the index."""
    return hashlib.blake2b(
        chunk_index.to_bytes(8, "little"), key=seed, digest_size=32, person=_CHUNK_PERSON
    ).digest()


def expand_chunk(seed: bytes, chunk_index: int, coords: int, bits: int) -> np.ndarray:
    """The first ``coords`` (<= CHUNK_COORDS) coordinates of chunk ``chunk_index``, narrow dtype.

    Values are *not* reduced mod 2^b (callers reduce once at the end); read-only view on the bytes.
    """
    dtype = mask_dtype(bits)
    size = coords * np.dtype(dtype).itemsize
    raw = nacl.bindings.randombytes_buf_deterministic(size, chunk_seed(seed, chunk_index))
    return np.frombuffer(raw, dtype=dtype)


def _check_seeds(seeds: Sequence[bytes]) -> None:
    for seed in seeds:
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise CodecError("mask seeds must be 32-byte strings (full 256-bit ChaCha20 keys)")


def combined_mask(
    plus: Sequence[bytes], minus: Sequence[bytes], bits: int, start: int, stop: int
) -> np.ndarray:
    """``sum PRG(plus) - sum PRG(minus) mod 2^b`` on coordinates ``[start, stop)``, as uint32.

    This is the one mask primitive: a device masks with it (``plus`` = its self-mask seed and the pair
    seeds where it is the smaller id, ``minus`` = the others; Bonawitz et al. §4 round 2) and the
    aggregator removes the masks left in the sum with it. Cost is one ChaCha20 expansion per seed per
    chunk plus an in-cache add; no Python loop runs over coordinates.
    """
    _check_seeds(plus)
    _check_seeds(minus)
    check_bits(bits)
    if start < 0 or stop < start:
        raise CodecError(f"bad coordinate range [{start}, {stop})")
    dtype = mask_dtype(bits)
    out = np.empty(stop - start, dtype=np.uint32)
    first = start // CHUNK_COORDS
    last = (stop - 1) // CHUNK_COORDS if stop > start else first - 1
    acc = np.empty(CHUNK_COORDS, dtype=dtype)
    for chunk in range(first, last + 1):
        lo = chunk * CHUNK_COORDS
        hi = min(lo + CHUNK_COORDS, stop)
        width = hi - lo  # generate from the chunk start: chunk seeds fix the stream from there
        view = acc[:width]
        view.fill(0)
        for seed in plus:
            np.add(view, expand_chunk(seed, chunk, width, bits), out=view)
        for seed in minus:
            np.subtract(view, expand_chunk(seed, chunk, width, bits), out=view)
        keep_from = max(start - lo, 0)
        out[lo + keep_from - start : hi - start] = view[keep_from:]
    np.bitwise_and(out, modulus_mask(bits), out=out)
    return out


def _combined_mask_task(args: tuple[list[bytes], list[bytes], int, int, int]) -> np.ndarray:
    return combined_mask(*args)


def combined_mask_parallel(
    plus: Sequence[bytes],
    minus: Sequence[bytes],
    bits: int,
    length: int,
    workers: int | None = None,
    pool: Literal["thread", "process"] = "thread",
    *,
    executor: Executor | None = None,
) -> np.ndarray:
    """:func:`combined_mask` over ``[0, length)`` split by chunk-aligned ranges across workers.

    libsodium and numpy release the GIL, so threads scale with cores at no copying cost; a process pool
    (``pool="process"``) is offered for deployments where the GIL is held elsewhere (it pickles only
    seeds in and the range's mask out). Small jobs (< :data:`PARALLEL_MIN_WORK` coordinate-expansions)
    run inline because a pool would cost more than it saves.
    """
    workers = workers or os.cpu_count() or 1
    chunks = -(-length // CHUNK_COORDS)
    work = (len(plus) + len(minus)) * length
    if workers <= 1 or chunks <= 1 or (executor is None and work < PARALLEL_MIN_WORK):
        return combined_mask(plus, minus, bits, 0, length)
    parts = min(workers, chunks)
    bounds = [round(i * chunks / parts) * CHUNK_COORDS for i in range(parts + 1)]
    bounds[-1] = length
    tasks = [(list(plus), list(minus), bits, bounds[i], bounds[i + 1]) for i in range(parts)]
    out = np.empty(length, dtype=np.uint32)
    if executor is not None:
        results = list(executor.map(_combined_mask_task, tasks))
    else:
        pool_cls = ProcessPoolExecutor if pool == "process" else ThreadPoolExecutor
        with pool_cls(max_workers=parts) as own:
            results = list(own.map(_combined_mask_task, tasks))
    for i, part in enumerate(results):
        out[bounds[i] : bounds[i + 1]] = part
    return out
