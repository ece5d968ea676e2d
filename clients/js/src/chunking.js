// Chunked payloads (docs/protocol.md §2.4): split for publishing, and bounded idempotent reassembly.

import { concat, equal, sha256 } from './crypto.js';
import { ChunkError } from './errors.js';
import { decode, encode } from './wire.js';

export const DEFAULT_CHUNK_LIMIT = 256 * 1024;
export const CHUNK_OVERHEAD = 96;

export const transferId = (payload) => sha256(payload).slice(0, 16);

/** Frames `{ chunk, payload }` to publish (chunk null = the message topic): chunks first, manifest last. */
export function split(payload, limit = DEFAULT_CHUNK_LIMIT) {
  if (limit <= CHUNK_OVERHEAD + 1) throw new RangeError(`chunk limit ${limit} is too small`);
  if (payload.length <= limit) return [{ chunk: null, payload }];
  const size = limit - CHUNK_OVERHEAD;
  const id = transferId(payload);
  const count = Math.ceil(payload.length / size);
  const manifest = encode({ t: 'manifest', transfer_id: id, total_size: payload.length, chunk_size: size, chunk_count: count, sha256: sha256(payload) });
  const frames = [{ chunk: null, payload: manifest }];
  for (let i = 0; i < count; i++) {
    frames.push({ chunk: i, payload: encode({ t: 'chunk', transfer_id: id, index: i, data: payload.subarray(i * size, (i + 1) * size) }) });
  }
  return frames;
}

/** Bounded reassembly keyed by (key, transfer id); each payload is returned once, after its hash checks. */
export class Reassembler {
  constructor({ maxTotal = 64 * 1024 * 1024, maxTransfers = 1024, ttlMs = 600_000 } = {}) {
    Object.assign(this, { maxTotal, maxTransfers, ttlMs });
    this.open = new Map();
    this.done = new Map();
    this.buffered = 0;
  }

  /** Feed one frame; returns the decoded message, or null while a chunked transfer is incomplete. */
  feed(key, chunkIndex, payload, maxBytes = this.maxTotal) {
    let assembled;
    if (chunkIndex === null) {
      const msg = decode(payload, null, { maxBytes });
      if (msg.t !== 'manifest') return msg;
      assembled = this.addManifest(key, msg);
    } else {
      const chunk = decode(payload, 'chunk', { maxBytes });
      if (chunk.index !== chunkIndex) throw new ChunkError(`chunk says index ${chunk.index}, topic says ${chunkIndex}`);
      assembled = this.addChunk(key, chunk);
    }
    if (!assembled) return null;
    const msg = decode(assembled, null, { maxBytes: this.maxTotal });
    if (msg.t === 'manifest' || msg.t === 'chunk') throw new ChunkError('a chunked transfer may not contain a chunk or manifest');
    return msg;
  }

  ident(key, id) { return `${key}\u0000${Array.from(id).join(',')}`; }

  transfer(ident) {
    let t = this.open.get(ident);
    if (!t) {
      this.evict(this.open.size >= this.maxTransfers);
      t = { manifest: null, parts: new Map(), started: Date.now() };
      this.open.set(ident, t);
    }
    return t;
  }

  addManifest(key, manifest) {
    if (manifest.total_size > this.maxTotal) throw new ChunkError(`chunked payload of ${manifest.total_size} bytes exceeds ${this.maxTotal}`);
    const ident = this.ident(key, manifest.transfer_id);
    if (this.done.has(ident)) return null;
    const t = this.transfer(ident);
    t.manifest = manifest;
    for (const [i, part] of t.parts) if (i >= manifest.chunk_count) { this.buffered -= part.length; t.parts.delete(i); }
    return this.complete(ident, t);
  }

  addChunk(key, chunk) {
    const ident = this.ident(key, chunk.transfer_id);
    if (this.done.has(ident)) return null;
    const t = this.transfer(ident);
    const m = t.manifest;
    if (m) {
      if (chunk.index >= m.chunk_count) throw new ChunkError(`chunk ${chunk.index} beyond count ${m.chunk_count}`);
      const last = chunk.index === m.chunk_count - 1;
      const want = last ? m.total_size - m.chunk_size * chunk.index : m.chunk_size;
      if (chunk.data.length !== want) throw new ChunkError(`chunk ${chunk.index} has ${chunk.data.length} bytes, expected ${want}`);
    }
    if (t.parts.has(chunk.index)) return null;
    if (this.buffered + chunk.data.length > this.maxTotal) {
      this.evict(true);
      if (this.buffered + chunk.data.length > this.maxTotal) throw new ChunkError('reassembly buffer full');
    }
    t.parts.set(chunk.index, chunk.data);
    this.buffered += chunk.data.length;
    return this.complete(ident, t);
  }

  complete(ident, t) {
    const m = t.manifest;
    if (!m || t.parts.size < m.chunk_count) return null;
    const payload = concat(...Array.from({ length: m.chunk_count }, (_, i) => t.parts.get(i)));
    this.drop(ident);
    if (payload.length !== m.total_size || !equal(sha256(payload), m.sha256)) throw new ChunkError('reassembled payload does not match its manifest');
    this.done.set(ident, Date.now());
    if (this.done.size > 4 * this.maxTransfers) for (const k of [...this.done.keys()].slice(0, this.done.size / 2)) this.done.delete(k);
    return payload;
  }

  drop(ident) {
    const t = this.open.get(ident);
    if (t) { for (const p of t.parts.values()) this.buffered -= p.length; this.open.delete(ident); }
  }

  evict(force) {
    const now = Date.now();
    for (const [ident, t] of this.open) if (now - t.started > this.ttlMs) this.drop(ident);
    if (force && this.open.size) {
      let oldest = null;
      for (const [ident, t] of this.open) if (!oldest || t.started < this.open.get(oldest).started) oldest = ident;
      this.drop(oldest);
    }
  }
}
