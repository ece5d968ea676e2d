// Bit packing of Z_{2^b} vectors (docs/protocol.md §4.6): coordinate i at bits [i*b, (i+1)*b), LSB first.

import { CodecError } from './errors.js';

function checkBits(bits) {
  if (!Number.isInteger(bits) || bits < 1 || bits > 32) throw new CodecError(`bit width must be an integer in 1..32, got ${bits}`);
}

export function packedSize(count, bits) { checkBits(bits); return Math.ceil((count * bits) / 8); }

/** Pack a Uint32Array (values < 2^bits) into ceil(n*bits/8) bytes. */
export function pack(values, bits) {
  checkBits(bits);
  const out = new Uint8Array(packedSize(values.length, bits));
  let at = 0;
  if (bits === 8 || bits === 16 || bits === 32) {
    const view = new DataView(out.buffer);
    for (let i = 0; i < values.length; i++) {
      if (bits < 32 && values[i] >>> bits) throw new CodecError(`value ${values[i]} does not fit in ${bits} bits`);
      if (bits === 8) out[i] = values[i]; else if (bits === 16) view.setUint16(2 * i, values[i], true); else view.setUint32(4 * i, values[i], true);
    }
    return out;
  }
  // General path: a 64-bit window is enough because bits <= 32.
  let window = 0; let filled = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v >>> bits) throw new CodecError(`value ${v} does not fit in ${bits} bits`);
    // window holds < 8 bits before each add, so window + (v << filled) < 2^40: exact in a double.
    window += v * 2 ** filled;
    filled += bits;
    while (filled >= 8) { out[at++] = window % 256; window = Math.floor(window / 256); filled -= 8; }
  }
  if (filled > 0) out[at++] = window;
  return out;
}

/** Inverse of pack: `count` values; the byte length must match and padding bits must be zero. */
export function unpack(data, bits, count) {
  checkBits(bits);
  if (data.length !== packedSize(count, bits)) throw new CodecError(`${count} coordinates at ${bits} bits take ${packedSize(count, bits)} bytes, got ${data.length}`);
  const out = new Uint32Array(count);
  const tail = (bits * count) % 8;
  if (count && tail && data[data.length - 1] >> tail) throw new CodecError('non-zero padding bits after the last coordinate');
  let window = 0; let filled = 0; let at = 0;
  const mask = 2 ** bits;
  for (let i = 0; i < count; i++) {
    while (filled < bits) { window += data[at++] * 2 ** filled; filled += 8; }
    out[i] = window % mask;
    window = Math.floor(window / mask);
    filled -= bits;
  }
  return out;
}
