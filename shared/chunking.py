"""Split payloads that exceed a broker's size limit into chunks, and reassemble them idempotently.

Brokers cap message size (EMQX refuses 1 MB by default), so anything larger than ``limit`` bytes is
sent as a :class:`ChunkManifest` (total size, chunk size, count, SHA-256) on the message's own topic
plus one :class:`Chunk` per piece on ``<topic>/c/<i>``. Chunks may arrive in any order, twice, or
before their manifest; the :class:`Reassembler` keeps bounded state and hands back each payload once,
only after its hash checks out.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from shared.errors import ChunkError, InvalidValue
from shared.wire import Chunk, ChunkManifest, Message, decode, encode

log = logging.getLogger(__name__)

DEFAULT_CHUNK_LIMIT = 256 * 1024
#: Bytes a Chunk message adds around its data (msgpack map, ids); kept generous.
CHUNK_OVERHEAD = 96


@dataclass(frozen=True)
class Frame:
    """One MQTT publication: ``chunk`` is None for the message (or manifest) topic, else the index."""

    chunk: int | None
    payload: bytes


def split(payload: bytes, limit: int = DEFAULT_CHUNK_LIMIT) -> list[Frame]:
    """Frames to publish for ``payload``: itself if it fits in ``limit``, else manifest + chunks."""
    if limit <= CHUNK_OVERHEAD + 1:
        raise InvalidValue(f"chunk limit {limit} is too small")
    if len(payload) <= limit:
        return [Frame(None, payload)]
    size = limit - CHUNK_OVERHEAD
    transfer_id = transfer_id_for(payload)
    count = -(-len(payload) // size)
    manifest = ChunkManifest(transfer_id, len(payload), size, count, hashlib.sha256(payload).digest())
    view = memoryview(payload)
    frames = [Frame(None, encode(manifest))]
    frames += [
        Frame(i, encode(Chunk(transfer_id, i, bytes(view[i * size : (i + 1) * size])))) for i in range(count)
    ]
    return frames


@dataclass
class _Transfer:
    manifest: ChunkManifest | None = None
    parts: dict[int, bytes] = field(default_factory=dict)
    received: int = 0
    started: float = field(default_factory=time.monotonic)


class Reassembler:
    """Bounded, idempotent reassembly of chunked payloads.

    ``key`` groups transfers (e.g. the sender's topic); a finished (key, transfer) is remembered so a
    late duplicate chunk never yields the payload twice. Transfers older than ``ttl_s`` or beyond
    ``max_transfers`` are evicted, and a transfer larger than ``max_total`` is refused.
    """

    def __init__(self, max_total: int = 64 * 1024 * 1024, max_transfers: int = 1024, ttl_s: float = 600.0):
        self.max_total = max_total
        self.max_transfers = max_transfers
        self.ttl_s = ttl_s
        self._open: dict[tuple[str, bytes], _Transfer] = {}
        self._done: dict[tuple[str, bytes], float] = {}
        self._buffered = 0

    def add_manifest(self, key: str, manifest: ChunkManifest) -> bytes | None:
        if manifest.total_size > self.max_total:
            raise ChunkError(f"chunked payload of {manifest.total_size} bytes exceeds {self.max_total}")
        ident = (key, manifest.transfer_id)
        if ident in self._done:
            return None
        transfer = self._transfer(ident)
        if transfer.manifest is not None and transfer.manifest != manifest:
            self._drop(ident)
            raise ChunkError("conflicting manifests for one transfer")
        transfer.manifest = manifest
        for index in [i for i in transfer.parts if i >= manifest.chunk_count]:
            self._buffered -= len(transfer.parts.pop(index))
        return self._complete(ident, transfer)

    def add_chunk(self, key: str, chunk: Chunk) -> bytes | None:
        ident = (key, chunk.transfer_id)
        if ident in self._done:
            return None
        transfer = self._transfer(ident)
        manifest = transfer.manifest
        if manifest is not None:
            if chunk.index >= manifest.chunk_count:
                raise ChunkError(f"chunk {chunk.index} beyond count {manifest.chunk_count}")
            last = chunk.index == manifest.chunk_count - 1
            want = manifest.total_size - manifest.chunk_size * chunk.index if last else manifest.chunk_size
            if len(chunk.data) != want:
                raise ChunkError(f"chunk {chunk.index} has {len(chunk.data)} bytes, expected {want}")
        if chunk.index in transfer.parts:
            return None  # duplicate
        if self._buffered + len(chunk.data) > self.max_total:
            self._evict(force=True)
            if self._buffered + len(chunk.data) > self.max_total:
                raise ChunkError("reassembly buffer full")
        transfer.parts[chunk.index] = chunk.data
        self._buffered += len(chunk.data)
        return self._complete(ident, transfer)

    def feed(self, key: str, chunk_index: int | None, payload: bytes, max_bytes: int) -> Message | None:
        """Decode one frame: the message itself, or None until its chunked transfer completes.

        ``chunk_index`` is None for the message topic (which carries the message or a manifest) and the
        chunk number for ``.../c/<i>`` topics. Raises WireError/ChunkError on anything malformed.
        """
        if chunk_index is None:
            msg: Message = decode(payload, max_bytes=max_bytes)
            if not isinstance(msg, ChunkManifest):
                return msg
            assembled = self.add_manifest(key, msg)
        else:
            chunk = decode(payload, Chunk, max_bytes=max_bytes)
            if chunk.index != chunk_index:
                raise ChunkError(f"chunk says index {chunk.index}, topic says {chunk_index}")
            assembled = self.add_chunk(key, chunk)
        if assembled is None:
            return None
        msg = decode(assembled, max_bytes=self.max_total)
        if isinstance(msg, (ChunkManifest, Chunk)):
            raise ChunkError("a chunked transfer may not contain another chunk or manifest")
        return msg

    def pending(self) -> int:
        return len(self._open)

    def _transfer(self, ident: tuple[str, bytes]) -> _Transfer:
        transfer = self._open.get(ident)
        if transfer is None:
            self._evict(force=len(self._open) >= self.max_transfers)
            transfer = self._open[ident] = _Transfer()
        return transfer

    def _complete(self, ident: tuple[str, bytes], transfer: _Transfer) -> bytes | None:
        manifest = transfer.manifest
        if manifest is None or len(transfer.parts) < manifest.chunk_count:
            return None
        payload = b"".join(transfer.parts[i] for i in range(manifest.chunk_count))
        self._drop(ident)
        if len(payload) != manifest.total_size or hashlib.sha256(payload).digest() != manifest.sha256:
            raise ChunkError("reassembled payload does not match its manifest's size and hash")
        self._done[ident] = time.monotonic()
        if len(self._done) > 4 * self.max_transfers:
            oldest = sorted(self._done, key=self._done.__getitem__)[: len(self._done) // 2]
            for old in oldest:
                del self._done[old]
        return payload

    def _drop(self, ident: tuple[str, bytes]) -> None:
        transfer = self._open.pop(ident, None)
        if transfer is not None:
            self._buffered -= sum(len(p) for p in transfer.parts.values())

    def _evict(self, force: bool) -> None:
        now = time.monotonic()
        for ident in [i for i, t in self._open.items() if now - t.started > self.ttl_s]:
            log.info("dropping stale partial transfer from %s", ident[0])
            self._drop(ident)
        if force and self._open:
            oldest = min(self._open, key=lambda i: self._open[i].started)
            log.warning("reassembly full: dropping oldest partial transfer from %s", oldest[0])
            self._drop(oldest)


def transfer_id_for(payload: bytes) -> bytes:
    """Deterministic transfer id, so a retried publication of the same bytes deduplicates."""
    return hashlib.sha256(payload).digest()[:16]
