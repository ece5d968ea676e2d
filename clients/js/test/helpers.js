import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Float64 } from '../src/msgpack.js';

export const VECTORS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'spec', 'vectors');
export const load = (name) => JSON.parse(readFileSync(join(VECTORS, `${name}.json`), 'utf8'));
export const fromHex = (h) => Uint8Array.from(Buffer.from(h, 'hex'));
export const toHex = (b) => Buffer.from(b).toString('hex');
export const f32 = (h) => { const b = fromHex(h); return new Float32Array(b.buffer, b.byteOffset, b.length / 4).slice(); };
export const f64s = (h) => { const b = fromHex(h); return new Float64Array(b.buffer, b.byteOffset, b.length / 8).slice(); };

/** Typed JSON ({"bin"}, {"float"}) to the values the JS wire layer uses. */
export function untyped(value) {
  if (Array.isArray(value)) return value.map(untyped);
  if (value && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'bin') return fromHex(value.bin);
    if (keys.length === 1 && keys[0] === 'float') return value.float;
    return Object.fromEntries(keys.map((k) => [k, untyped(value[k])]));
  }
  return value;
}

/** Typed JSON for encoding `any` values: floats must stay floats on the wire. */
export function wireTyped(value) {
  if (Array.isArray(value)) return value.map(wireTyped);
  if (value && typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'bin') return fromHex(value.bin);
    if (keys.length === 1 && keys[0] === 'float') return new Float64(value.float);
    return Object.fromEntries(keys.map((k) => [k, wireTyped(value[k])]));
  }
  return value;
}

/** A uniform() that replays recorded draws. */
export function replay(values) {
  let at = 0;
  return () => { if (at >= values.length) throw new Error('uniforms exhausted'); return values[at++]; };
}
