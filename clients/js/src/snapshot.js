// Model snapshots and deltas (docs/protocol.md §5-6): verify, decode to a flat Float32Array, apply deltas.

import { decompress } from 'fzstd';

import * as c from './crypto.js';
import { CodecError, ProtocolError } from './errors.js';
import { Float64, unpack } from './msgpack.js';
import { decode } from './wire.js';

const EMPTY_BIN = Uint8Array.of(0xc4, 0x00);

/**
 * Verify a map-form signature (snapshot, announcement) on the received bytes: the signed bytes are the
 * payload with the 64-byte `signature` value replaced by an empty bin. Returns the decoded message.
 */
export function verifyMapSigned(payload, expectedType, publicKey) {
  const { msg, spans } = decode(payload, expectedType, { withSpans: true });
  const span = spans.get('signature');
  if (!span || msg.signature.length !== 64) throw new ProtocolError(`${msg.t} message is not signed`);
  const signed = c.concat(payload.subarray(0, span[0]), EMPTY_BIN, payload.subarray(span[1]));
  if (!c.verify(publicKey, signed, msg.signature)) throw new ProtocolError(`${msg.t} message has a bad signature`);
  return msg;
}

export function layoutDim(layout) {
  return layout.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

/** SHA-256 over names, shapes and float32 LE data of every tensor (docs/protocol.md §6.2). */
export function weightsDigest(layout, flat) {
  const parts = [];
  let offset = 0;
  for (const spec of layout) {
    const name = c.utf8(spec.name);
    const head = new Uint8Array(4 + name.length + 4 + 8 * spec.shape.length);
    const view = new DataView(head.buffer);
    view.setUint32(0, name.length, true);
    head.set(name, 4);
    view.setUint32(4 + name.length, spec.shape.length, true);
    spec.shape.forEach((d, i) => view.setBigUint64(8 + name.length + 8 * i, BigInt(d), true));
    const count = spec.shape.reduce((a, b) => a * b, 1);
    const data = new Uint8Array(flat.buffer, flat.byteOffset + 4 * offset, 4 * count);
    parts.push(head, data);
    offset += count;
  }
  return c.sha256(c.concat(...parts));
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function body(data, format) {
  const value = unpack(data, { limits: { maxBytes: 1 << 30, maxStr: 1 << 16, maxArray: 100_000, maxMap: 100_000 } });
  if (!(value instanceof Map) || value.get('fmt') !== format || value.get('v') !== 1) throw new CodecError(`not a ${format} v1 body`);
  if (!Array.isArray(value.get('tensors'))) throw new CodecError('snapshot has no tensor list');
  return value;
}

function readCodes(record, layoutSpec, width) {
  if (!(record instanceof Map)) throw new CodecError('tensor record must be a map');
  const name = record.get('name');
  const shape = record.get('shape');
  const data = record.get('data');
  const scale = record.get('scale');
  if (name !== layoutSpec.name || JSON.stringify(shape) !== JSON.stringify(layoutSpec.shape)) throw new CodecError(`tensor ${name} does not match the layout`);
  if (!(data instanceof Uint8Array) || !(scale instanceof Float64) || !(scale.value > 0)) throw new CodecError(`malformed tensor record ${name}`);
  const count = shape.reduce((a, b) => a * b, 1);
  let raw;
  try { raw = count ? decompress(data) : new Uint8Array(0); } catch (e) { throw new CodecError(`tensor ${name} does not decompress: ${e.message}`); }
  if (raw.length !== count * width) throw new CodecError(`tensor ${name} holds ${raw.length} bytes, expected ${count * width}`);
  return { enc: record.get('enc'), scale: scale.value, count, raw: new DataView(raw.buffer, raw.byteOffset, raw.byteLength), bytes: raw };
}

const WIDTH = { f16: 2, q16: 2, q8: 1, f32: 4 };

/** Flat float32 weights of a `model` message (hash always; signature when `publicKey` is given). */
export function snapshotWeights(payload, publicKey = null) {
  const msg = publicKey ? verifyMapSigned(payload, 'model', publicKey) : decode(payload, 'model');
  if (!c.equal(c.sha256(msg.weights), msg.sha256)) throw new ProtocolError(`snapshot v${msg.version} fails its hash check`);
  const dim = layoutDim(msg.layout);
  if (msg.encoding === 'f32') {
    if (msg.weights.length !== 4 * dim) throw new CodecError('snapshot body has the wrong size');
    return { msg, weights: new Float32Array(msg.weights.slice().buffer) };
  }
  if (msg.encoding !== 'compact') throw new CodecError(`not a full snapshot: ${msg.encoding}`);
  const b = body(msg.weights, 'fedmq.snapshot');
  const tensors = b.get('tensors');
  if (tensors.length !== msg.layout.length) throw new CodecError('compact snapshot tensors do not match the layout');
  const out = new Float32Array(dim);
  let offset = 0;
  tensors.forEach((record, i) => {
    const enc = record instanceof Map ? record.get('enc') : null;
    if (!(enc in WIDTH)) throw new CodecError(`unknown tensor encoding ${enc}`);
    const t = readCodes(record, msg.layout[i], WIDTH[enc]);
    const s = Math.fround(t.scale);
    for (let j = 0; j < t.count; j++) {
      if (enc === 'f32') out[offset + j] = t.raw.getFloat32(4 * j, true);
      else if (enc === 'f16') out[offset + j] = halfToFloat(t.raw.getUint16(2 * j, true));
      else if (enc === 'q16') out[offset + j] = Math.fround(t.raw.getInt16(2 * j, true) * s);
      else out[offset + j] = Math.fround(t.raw.getInt8(j) * s);
    }
    offset += t.count;
  });
  if (!c.equal(weightsDigest(msg.layout, out), b.get('sha256'))) throw new CodecError('snapshot hash mismatch');
  return { msg, weights: out };
}

/** Apply a `compact-delta` model message to the held weights of its base version (bit-exact). */
export function applyDelta(payload, base, publicKey = null) {
  const msg = publicKey ? verifyMapSigned(payload, 'model', publicKey) : decode(payload, 'model');
  if (msg.encoding !== 'compact-delta') throw new CodecError(`not a delta snapshot: ${msg.encoding}`);
  if (!c.equal(c.sha256(msg.weights), msg.sha256)) throw new ProtocolError('delta fails its hash check');
  const b = body(msg.weights, 'fedmq.snapshot-delta');
  if (!c.equal(weightsDigest(msg.layout, base), b.get('base_sha256'))) throw new CodecError('delta does not apply to the weights held; fetch the full snapshot');
  const baseWords = new Uint32Array(base.buffer, base.byteOffset, base.length);
  const outWords = new Uint32Array(base.length);
  let offset = 0;
  b.get('tensors').forEach((record, i) => {
    const t = readCodes(record, msg.layout[i], 4);
    if (t.enc !== 'xplanes') throw new CodecError('delta tensors must be xplanes');
    for (let j = 0; j < t.count; j++) {
      const word = (t.bytes[j] | (t.bytes[t.count + j] << 8) | (t.bytes[2 * t.count + j] << 16) | (t.bytes[3 * t.count + j] << 24)) >>> 0;
      outWords[offset + j] = (baseWords[offset + j] + word) >>> 0;
    }
    offset += t.count;
  });
  const out = new Float32Array(outWords.buffer);
  if (!c.equal(weightsDigest(msg.layout, out), b.get('sha256'))) throw new CodecError('delta result hash mismatch');
  return { msg, weights: out };
}
