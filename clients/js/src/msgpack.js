// Canonical msgpack, as fedmq's Python side writes it (docs/protocol.md §2.1).
//
// Why not a general msgpack library: signatures cover exact bytes, so the encoder must make the same
// choices as Python's msgpack (smallest integer format, float64 for every float, bin for bytes, str8), and
// the decoder must keep what JavaScript's one number type loses: a float that happens to be integral
// (1.0) decodes to a Float64 wrapper, so re-encoding gives the same bytes. Decoding is bounded and throws
// WireError on anything malformed.

import { WireError } from './errors.js';

/** A msgpack float64 whose value may be integral; `valueOf()` makes it usable as a number. */
export class Float64 {
  constructor(value) { this.value = Number(value); }
  valueOf() { return this.value; }
  toJSON() { return this.value; }
}

/** Mark a number as a float on the wire (every Python float is encoded as float64). */
export const f64 = (value) => new Float64(value);

export const LIMITS = {
  maxBytes: 64 * 1024 * 1024,
  maxStr: 64 * 1024,
  maxArray: 1_000_000,
  maxMap: 100_000,
};

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.len = 0; }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(b) { this.reserve(1); this.buf[this.len++] = b; }
  bytes(data) { this.reserve(data.length); this.buf.set(data, this.len); this.len += data.length; }
  uint(value, size) {
    this.reserve(size);
    for (let i = size - 1; i >= 0; i--) this.buf[this.len++] = Number((BigInt(value) >> BigInt(8 * i)) & 0xffn);
  }
  result() { return this.buf.slice(0, this.len); }
}

function encodeInt(w, value) {
  const v = BigInt(value);
  if (v >= 0n) {
    if (v < 128n) w.byte(Number(v));
    else if (v < 0x100n) { w.byte(0xcc); w.uint(v, 1); }
    else if (v < 0x10000n) { w.byte(0xcd); w.uint(v, 2); }
    else if (v < 0x100000000n) { w.byte(0xce); w.uint(v, 4); }
    else if (v < 1n << 64n) { w.byte(0xcf); w.uint(v, 8); }
    else throw new WireError(`integer ${v} does not fit msgpack`);
  } else if (v >= -32n) w.byte(Number(v & 0xffn));
  else if (v >= -0x80n) { w.byte(0xd0); w.uint(v & 0xffn, 1); }
  else if (v >= -0x8000n) { w.byte(0xd1); w.uint(v & 0xffffn, 2); }
  else if (v >= -0x80000000n) { w.byte(0xd2); w.uint(v & 0xffffffffn, 4); }
  else if (v >= -(1n << 63n)) { w.byte(0xd3); w.uint(v & ((1n << 64n) - 1n), 8); }
  else throw new WireError(`integer ${v} does not fit msgpack`);
}

function encodeValue(w, value) {
  if (value === null || value === undefined) w.byte(0xc0);
  else if (value === true) w.byte(0xc3);
  else if (value === false) w.byte(0xc2);
  else if (value instanceof Float64) {
    w.byte(0xcb);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, value.value, false);
    w.bytes(b);
  } else if (typeof value === 'bigint') encodeInt(w, value);
  else if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new WireError(`non-integral number ${value} must be wrapped with f64()`);
    encodeInt(w, value);
  } else if (typeof value === 'string') {
    const data = textEncoder.encode(value);
    const n = data.length;
    if (n < 32) w.byte(0xa0 | n);
    else if (n < 0x100) { w.byte(0xd9); w.uint(n, 1); }
    else if (n < 0x10000) { w.byte(0xda); w.uint(n, 2); }
    else { w.byte(0xdb); w.uint(n, 4); }
    w.bytes(data);
  } else if (value instanceof Uint8Array) {
    const n = value.length;
    if (n < 0x100) { w.byte(0xc4); w.uint(n, 1); }
    else if (n < 0x10000) { w.byte(0xc5); w.uint(n, 2); }
    else { w.byte(0xc6); w.uint(n, 4); }
    w.bytes(value);
  } else if (Array.isArray(value)) {
    const n = value.length;
    if (n < 16) w.byte(0x90 | n);
    else if (n < 0x10000) { w.byte(0xdc); w.uint(n, 2); }
    else { w.byte(0xdd); w.uint(n, 4); }
    for (const item of value) encodeValue(w, item);
  } else if (value instanceof Map || typeof value === 'object') {
    const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
    const n = entries.length;
    if (n < 16) w.byte(0x80 | n);
    else if (n < 0x10000) { w.byte(0xde); w.uint(n, 2); }
    else { w.byte(0xdf); w.uint(n, 4); }
    for (const [k, v] of entries) { encodeValue(w, k); encodeValue(w, v); }
  } else throw new WireError(`cannot encode ${typeof value}`);
}

/** Canonical msgpack bytes of `value` (objects keep their insertion order). */
export function pack(value) {
  const w = new Writer();
  encodeValue(w, value);
  return w.result();
}

class Reader {
  constructor(data, limits) {
    this.data = data; this.pos = 0; this.limits = limits;
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.spans = null;
  }
  need(n) { if (this.pos + n > this.data.length) throw new WireError('truncated msgpack'); }
  u8() { this.need(1); return this.data[this.pos++]; }
  uint(size) {
    this.need(size);
    let v = 0;
    if (size === 8) {
      const big = this.view.getBigUint64(this.pos, false); this.pos += 8;
      return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    for (let i = 0; i < size; i++) v = v * 256 + this.data[this.pos++];
    return v;
  }
  int(size) {
    this.need(size);
    let v;
    if (size === 1) v = this.view.getInt8(this.pos);
    else if (size === 2) v = this.view.getInt16(this.pos, false);
    else if (size === 4) v = this.view.getInt32(this.pos, false);
    else {
      const big = this.view.getBigInt64(this.pos, false);
      v = big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    this.pos += size;
    return v;
  }
  raw(n) { this.need(n); const out = this.data.subarray(this.pos, this.pos + n); this.pos += n; return out; }
  str(n) {
    if (n > this.limits.maxStr) throw new WireError(`string of ${n} bytes exceeds ${this.limits.maxStr}`);
    try { return textDecoder.decode(this.raw(n)); } catch (e) {
      if (e instanceof WireError) throw e;
      throw new WireError('string is not UTF-8');
    }
  }
  bin(n) {
    if (n > this.limits.maxBytes) throw new WireError(`bin of ${n} bytes exceeds the limit`);
    return this.raw(n).slice();
  }
  array(n, depth) {
    if (n > this.limits.maxArray) throw new WireError(`array of ${n} items exceeds ${this.limits.maxArray}`);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth + 1);
    return out;
  }
  map(n, depth) {
    if (n > this.limits.maxMap) throw new WireError(`map of ${n} entries exceeds ${this.limits.maxMap}`);
    const out = new Map();
    for (let i = 0; i < n; i++) {
      const key = this.value(depth + 1);
      if (typeof key !== 'string') throw new WireError('map keys must be strings');
      const start = this.pos;
      const value = this.value(depth + 1);
      if (depth === 0 && this.spans) this.spans.set(key, [start, this.pos]);
      out.set(key, value);
    }
    return out;
  }
  value(depth = 0) {
    if (depth > 64) throw new WireError('msgpack nested too deeply');
    const b = this.u8();
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return this.map(b & 0x0f, depth);
    if ((b & 0xf0) === 0x90) return this.array(b & 0x0f, depth);
    if ((b & 0xe0) === 0xa0) return this.str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bin(this.uint(1));
      case 0xc5: return this.bin(this.uint(2));
      case 0xc6: return this.bin(this.uint(4));
      case 0xca: { this.need(4); const v = this.view.getFloat32(this.pos, false); this.pos += 4; return new Float64(v); }
      case 0xcb: { this.need(8); const v = this.view.getFloat64(this.pos, false); this.pos += 8; return new Float64(v); }
      case 0xcc: return this.uint(1);
      case 0xcd: return this.uint(2);
      case 0xce: return this.uint(4);
      case 0xcf: return this.uint(8);
      case 0xd0: return this.int(1);
      case 0xd1: return this.int(2);
      case 0xd2: return this.int(4);
      case 0xd3: return this.int(8);
      case 0xd9: return this.str(this.uint(1));
      case 0xda: return this.str(this.uint(2));
      case 0xdb: return this.str(this.uint(4));
      case 0xdc: return this.array(this.uint(2), depth);
      case 0xdd: return this.array(this.uint(4), depth);
      case 0xde: return this.map(this.uint(2), depth);
      case 0xdf: return this.map(this.uint(4), depth);
      default: throw new WireError(`unsupported msgpack byte 0x${b.toString(16)}`);
    }
  }
}

/**
 * Decode one msgpack value (maps become `Map`s, floats `Float64`). With `spans`, the byte range of each
 * top-level map value is recorded (used to verify map-form signatures on the received bytes).
 */
export function unpack(data, { limits = LIMITS, spans = null } = {}) {
  if (!(data instanceof Uint8Array)) throw new WireError('payload must be a Uint8Array');
  if (data.length > limits.maxBytes) throw new WireError(`payload of ${data.length} bytes exceeds the limit`);
  const reader = new Reader(data, limits);
  reader.spans = spans;
  const value = reader.value(0);
  if (reader.pos !== data.length) throw new WireError('trailing bytes after the msgpack value');
  return value;
}
