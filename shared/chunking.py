"""Split payloads that exceed a broker's size limit into chunks, and reassemble them idempotently.

Brokers cap message size (EMQX refuses 1 MB by default), so anything larger than ``limit`` bytes is
sent as a :class:`ChunkManifest` (total size, chunk size, count, SHA-256) on the message's own topic
plus one :class:`Chunk` per piece on ``<topic>/c/<i>``. Chunks may arrive in any order, twice, or
before their manifest; the :class:`Reassembler` keeps bounded state and hands back each payload once,
only after its hash checks out.

Reassembly state is charged to the transfer's *owner* (the sender; by default the last ``/`` part of
the key) so that one sender can only crowd out its own transfers: each owner may hold at most
``owner_transfers`` partial transfers and ``owner_bytes`` buffered bytes, every buffered chunk costs
its length plus :data:`PART_COST` (so zero-byte chunks are not free), and when the shared pool is full
the owner holding the most is evicted first, never a smaller, honest one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.errors import ChunkError, InvalidValue
from shared.wire import Chunk, ChunkManifest, Message, decode, encode
from shared.wire.base import MAX_DEVICE_OBJECTS

log = logging.getLogger(__name__)

DEFAULT_CHUNK_LIMIT = 256 * 1024
#: Bytes a Chunk message adds around its data (msgpack map, ids); kept generous.
CHUNK_OVERHEAD = 96
#: Bookkeeping bytes charged per buffered chunk on top of its data (a zero-byte chunk still costs this).
PART_COST = 64


def owner_from_key(key: str) -> str:
    """Default owner of a reassembly key: its last ``/`` part (the aggregator's keys end in the sender)."""
    return key.rsplit("/", 1)[-1]


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
    owner: str = ""
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

    def __init__(
        self,
        max_total: int = 64 * 1024 * 1024,
        max_transfers: int = 1024,
        ttl_s: float = 600.0,
        *,
        owner_transfers: int = 4,
        owner_bytes: int | None = None,
        pool_bytes: int | None = None,
        owner_of: Callable[[str], str] = owner_from_key,
        max_objects: int = MAX_DEVICE_OBJECTS,
    ):
        self.max_total = max_total
        self.max_transfers = max_transfers
        self.ttl_s = ttl_s
        self.owner_transfers = owner_transfers
        #: Buffered bytes one owner may hold: one largest payload plus the bookkeeping of its chunks
        #: (12.5%: chunks of 512 bytes or more; fedmq's are 256 KiB).
        default_owner = max_total + max_total // 8 + 64 * PART_COST
        self.owner_bytes = owner_bytes if owner_bytes is not None else default_owner
        #: The shared pool across owners (by default one owner's worth, as before quotas: memory stays put;
        #: under pressure the largest holder is evicted first).
        self.pool_bytes = pool_bytes if pool_bytes is not None else self.owner_bytes
        self._owner_of = owner_of
        #: Decoding budget of each message (``shared.wire.base``): device-sized by default.
        self.max_objects = max_objects
        self._open: dict[tuple[str, bytes], _Transfer] = {}
        self._done: dict[tuple[str, bytes], float] = {}
        self._buffered = 0
        self._by_owner: Counter[str] = Counter()
        self._transfers_by_owner: Counter[str] = Counter()
        #: Partial transfers evicted, by owner (an honest owner should never appear here under attack).
        self.evicted: Counter[str] = Counter()
        #: The transfer the last manifest or chunk fed belonged to (the aggregator's receipts read it).
        self.last: tuple[str, bytes] | None = None
        self.last_was_manifest = False

    def add_manifest(self, key: str, manifest: ChunkManifest) -> bytes | None:
        if manifest.total_size > self.max_total:
            raise ChunkError(f"chunked payload of {manifest.total_size} bytes exceeds {self.max_total}")
        ident = self.last = (key, manifest.transfer_id)
        self.last_was_manifest = True
        if ident in self._done:
            return None
        transfer = self._transfer(ident)
        if transfer.manifest is not None and transfer.manifest != manifest:
            self._drop(ident)
            raise ChunkError("conflicting manifests for one transfer")
        transfer.manifest = manifest
        for index in [i for i in transfer.parts if i >= manifest.chunk_count]:
            self._charge(transfer.owner, -(len(transfer.parts.pop(index)) + PART_COST))
        return self._complete(ident, transfer)

    def add_chunk(self, key: str, chunk: Chunk) -> bytes | None:
        ident = self.last = (key, chunk.transfer_id)
        self.last_was_manifest = False
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
        cost = len(chunk.data) + PART_COST
        owner = transfer.owner
        if self._by_owner[owner] + cost > self.owner_bytes:
            self._evict_owner(owner, keep=ident)  # an owner over its quota loses its own oldest transfers
            if self._by_owner[owner] + cost > self.owner_bytes:
                raise ChunkError(f"reassembly quota of {owner!r} ({self.owner_bytes} bytes) is full")
        if self._buffered + cost > self.pool_bytes:
            self._evict(force=False)
            while self._buffered + cost > self.pool_bytes and self._evict_largest(keep=ident):
                pass
            if self._buffered + cost > self.pool_bytes:
                raise ChunkError("reassembly buffer full")
        transfer.parts[chunk.index] = chunk.data
        self._charge(owner, cost)
        return self._complete(ident, transfer)

    def feed(self, key: str, chunk_index: int | None, payload: bytes, max_bytes: int) -> Message | None:
        """Decode one frame: the message itself, or None until its chunked transfer completes.

        ``chunk_index`` is None for the message topic (which carries the message or a manifest) and the
        chunk number for ``.../c/<i>`` topics. Raises WireError/ChunkError on anything malformed.
        """
        if chunk_index is None:
            msg: Message = decode(payload, max_bytes=max_bytes, max_objects=self.max_objects)
            if not isinstance(msg, ChunkManifest):
                return msg
            assembled = self.add_manifest(key, msg)
        else:
            chunk = decode(payload, Chunk, max_bytes=max_bytes, max_objects=self.max_objects)
            if chunk.index != chunk_index:
                raise ChunkError(f"chunk says index {chunk.index}, topic says {chunk_index}")
            assembled = self.add_chunk(key, chunk)
        if assembled is None:
            return None
        msg = decode(assembled, max_bytes=self.max_total, max_objects=self.max_objects)
        if isinstance(msg, (ChunkManifest, Chunk)):
            raise ChunkError("a chunked transfer may not contain another chunk or manifest")
        return msg

    def pending(self) -> int:
        return len(self._open)

    def holding(self, key: str, transfer_id: bytes) -> tuple[frozenset[int], bool, bool] | None:
        """(chunk indices held, manifest held, complete) of one transfer; None if unknown (or evicted)."""
        ident = (key, transfer_id)
        if ident in self._done:
            return frozenset(), True, True
        transfer = self._open.get(ident)
        if transfer is None:
            return None
        return frozenset(transfer.parts), transfer.manifest is not None, False

    def partial(self) -> list[tuple[str, bytes]]:
        """(key, transfer id) of every transfer under way."""
        return list(self._open)

    def buffered_by(self, owner: str) -> int:
        """Bytes (with per-chunk bookkeeping) ``owner``'s partial transfers hold now."""
        return self._by_owner[owner]

    def _charge(self, owner: str, cost: int) -> None:
        self._buffered += cost
        self._by_owner[owner] += cost
        if self._by_owner[owner] <= 0:
            del self._by_owner[owner]

    def _transfer(self, ident: tuple[str, bytes]) -> _Transfer:
        transfer = self._open.get(ident)
        if transfer is None:
            owner = self._owner_of(ident[0])
            if self._transfers_by_owner[owner] >= self.owner_transfers:
                self._evict_owner(owner, keep=None, one=True)
            self._evict(force=False)
            if len(self._open) >= self.max_transfers:
                self._evict_largest(keep=None, by_count=True)
            transfer = self._open[ident] = _Transfer(owner)
            self._transfers_by_owner[owner] += 1
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
            self._charge(transfer.owner, -sum(len(p) + PART_COST for p in transfer.parts.values()))
            self._transfers_by_owner[transfer.owner] -= 1
            if self._transfers_by_owner[transfer.owner] <= 0:
                del self._transfers_by_owner[transfer.owner]

    def _evict(self, force: bool) -> None:
        now = time.monotonic()
        for ident in [i for i, t in self._open.items() if now - t.started > self.ttl_s]:
            log.info("dropping stale partial transfer from %s", ident[0])
            self._drop(ident)
        if force and self._open:
            self._evict_largest(keep=None)

    def _evict_owner(self, owner: str, keep: tuple[str, bytes] | None, one: bool = False) -> None:
        """Drop ``owner``'s own oldest partial transfers (all but ``keep``; only one if ``one``)."""
        mine = sorted((t.started, i) for i, t in self._open.items() if t.owner == owner and i != keep)
        for _, ident in mine[:1] if one else mine:
            self.evicted[owner] += 1
            log.debug("reassembly quota of %s: dropping its oldest partial transfer", owner)
            self._drop(ident)

    def _evict_largest(self, keep: tuple[str, bytes] | None, by_count: bool = False) -> bool:
        """Pool full: drop the oldest transfer of the owner holding the most (bytes, or transfers)."""
        usage = self._transfers_by_owner if by_count else self._by_owner
        candidates = {t.owner for i, t in self._open.items() if i != keep}
        if not candidates:
            return False
        hog = max(candidates, key=lambda o: (usage[o], o))
        log.warning("reassembly full: dropping the oldest partial transfer of %s, the largest holder", hog)
        self._evict_owner(hog, keep=keep, one=True)
        return True


def transfer_id_for(payload: bytes) -> bytes:
    """Deterministic transfer id, so a retried publication of the same bytes deduplicates."""
    return hashlib.sha256(payload).digest()[:16]
