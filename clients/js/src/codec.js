// The uplink update codec (docs/protocol.md §7): clip -> rotate -> subsample -> stochastic rounding into
// Z_{2^b}, plus the device weight as exact integer limbs. Every float operation is the one the Python
// encoder does, in the same precision (float32 for the vector, float64 for norms, scale and rounding),
// so the integers match bit for bit given the same uniforms.

import { CodecError } from './errors.js';
import { seededBits } from './pcg64.js';

export const PURPOSE_SIGNS = 1;
export const PURPOSE_SUBSAMPLE = 2;
export const PURPOSE_SIGNS_TAIL = 3;
const FLOAT_SLACK = 1e-5;
const fr = Math.fround;

/** Python's round(): to nearest, ties to even. */
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const diff = x - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

const bitLength = (n) => (n <= 0 ? 0 : Math.floor(Math.log2(n)) + 1);
export const mixingDim = (dim) => 2 ** (bitLength(dim) - 1);

export function l2Norm(vector) {
  let total = 0;
  for (let i = 0; i < vector.length; i++) total += vector[i] * vector[i];
  return Math.sqrt(total);
}

export function clipFactor(vector, clipNorm) {
  const norm = l2Norm(vector);
  if (!Number.isFinite(norm)) throw new CodecError('the update contains NaN or infinite values');
  return norm <= clipNorm ? 1.0 : clipNorm / norm;
}

/** Orthonormal fast Walsh-Hadamard transform in place, float32 (`f32 = true`) or float64. */
export function fwht(v, f32 = true) {
  const n = v.length;
  if (n & (n - 1)) throw new CodecError(`Hadamard transform needs a power-of-two length, got ${n}`);
  const r = f32 ? fr : (x) => x;
  for (let half = 1; half < n; half *= 2) {
    for (let start = 0; start < n; start += 2 * half) {
      for (let i = start; i < start + half; i++) {
        const a = r(v[i] + v[i + half]);
        v[i] = a;
        v[i + half] = r(v[i + half] * -2 + a);
      }
    }
  }
  if (n > 1) {
    const s = r(1 / Math.sqrt(n));
    for (let i = 0; i < n; i++) v[i] = r(v[i] * s);
  }
}

function applySigns(v, seed, purpose) {
  const bits = seededBits(seed, purpose);
  for (let base = 0; base < v.length; base += 64) {
    const word = bits.next64();
    const lo = Number(word & 0xffffffffn);
    const hi = Number(word >> 32n);
    for (let j = 0; j < 64 && base + j < v.length; j++) {
      const bit = j < 32 ? (lo >>> j) & 1 : (hi >>> (j - 32)) & 1;
      if (bit) v[base + j] = -v[base + j];
    }
  }
}

/** The per-round codec settings from `config.codec` (a plain object), validated like CodecConfig. */
export function codecConfig(plain, overrides = {}) {
  const c = {
    rotation: true, subsample_rate: 1.0, weight_bits: 16, wrap_probability: 1e-9, scheme: 'int',
    topk_fraction: 0.01, noise_multiplier: 0.0, ...plain, ...overrides,
  };
  if (c.scheme !== 'int') throw new CodecError(`scheme ${c.scheme} cannot run under secure aggregation`);
  if (!Number.isInteger(c.bits) || c.bits < 1 || c.bits > 32) throw new CodecError('bits must be in 1..32');
  if (!(c.clip_norm > 0) || !Number.isFinite(c.clip_norm)) throw new CodecError('clip_norm must be positive');
  if (!Number.isInteger(c.expected_clients) || c.expected_clients < 1) throw new CodecError('expected_clients must be >= 1');
  if (!(c.seed instanceof Uint8Array) || c.seed.length !== 32) throw new CodecError('seed must be 32 bytes');
  if (!(c.subsample_rate > 0 && c.subsample_rate <= 1)) throw new CodecError('subsample_rate must be in (0, 1]');
  if (2 ** (c.bits - 1) - 1 - c.expected_clients <= 0) throw new CodecError(`${c.bits} bits cannot hold ${c.expected_clients} clients`);
  return c;
}

export class UpdateEncoder {
  constructor(config, dim) {
    if (!Number.isInteger(dim) || dim < 1) throw new CodecError(`update dimension must be a positive integer, got ${dim}`);
    this.config = config;
    this.dim = dim;
    this.mixingDim = config.rotation ? mixingDim(dim) : dim;
    this.keptMask = null;
    this.dataLength = dim;
    if (config.subsample_rate < 1) {
      const bits = seededBits(config.seed, PURPOSE_SUBSAMPLE);
      const threshold = BigInt(Math.min(Math.floor(config.subsample_rate * 2 ** 53), 2 ** 53));
      this.keptMask = new Uint8Array(dim);
      let kept = 0;
      for (let i = 0; i < dim; i++) if ((bits.next64() >> 11n) < threshold) { this.keptMask[i] = 1; kept++; }
      this.dataLength = kept;
    }
    const n = config.expected_clients;
    let room = 2 ** (config.bits - 1) - 1 - n;
    let bound = config.rotation
      ? n * config.clip_norm * Math.sqrt((2.0 * Math.log((2.0 * dim) / config.wrap_probability)) / this.mixingDim)
      : n * config.clip_norm;
    if (config.noise_multiplier > 0) {
      const tau = Math.sqrt(2.0 * Math.log((2.0 * dim) / config.wrap_probability));
      room -= config.noise_multiplier * Math.sqrt(dim) * tau;
      bound += config.noise_multiplier * config.clip_norm * tau;
      if (room <= 0) throw new CodecError('no room for the noise');
    }
    this.scale = room / (bound * (1.0 + FLOAT_SLACK));
    const headroom = Math.floor((2 ** config.bits - 1) / n);
    this.limbBits = bitLength(headroom + 1) - 1;
    this.limbCount = Math.ceil((config.weight_bits + 1) / this.limbBits);
    this.encodedLength = this.dataLength + this.limbCount;
  }

  gridWeight(weight) {
    if (!(weight >= 0 && weight <= 1)) throw new CodecError(`device weight must be in [0, 1], got ${weight}`);
    return roundHalfEven(weight * 2 ** this.config.weight_bits);
  }

  /**
   * Encode `weight * clip(delta)` (Float32Array of `dim`) and the weight; `uniform()` returns the next
   * draw in [0, 1) (the device's private randomness). Returns a Uint32Array of `encodedLength`.
   */
  encode(delta, weight, uniform) {
    if (delta.length !== this.dim) throw new CodecError(`expected a delta of ${this.dim} coordinates, got ${delta.length}`);
    const c = this.config;
    const grid = this.gridWeight(weight);
    const factor = fr(clipFactor(delta, c.clip_norm) * (grid / 2 ** c.weight_bits));
    const work = new Float32Array(this.dim);
    for (let i = 0; i < this.dim; i++) work[i] = delta[i] * factor;
    if (c.rotation) this.rotate(work);
    const out = new Uint32Array(this.encodedLength);
    const modulus = 2 ** c.bits;
    let k = 0;
    for (let i = 0; i < this.dim; i++) {
      if (this.keptMask && !this.keptMask[i]) continue;
      let scaled = work[i] * this.scale;
      scaled += uniform();
      const q = Math.floor(scaled);
      out[k++] = ((q % modulus) + modulus) % modulus;
    }
    const limbMod = 2 ** this.limbBits;
    let rest = grid;
    for (let j = 0; j < this.limbCount; j++) { out[k++] = rest % limbMod; rest = Math.floor(rest / limbMod); }
    return out;
  }

  rotate(v) {
    const m = this.mixingDim;
    const head = v.subarray(0, m);
    applySigns(head, this.config.seed, PURPOSE_SIGNS);
    fwht(head);
    if (m < this.dim) {
      const tail = v.subarray(this.dim - m);
      applySigns(tail, this.config.seed, PURPOSE_SIGNS_TAIL);
      fwht(tail);
    }
  }

  /** Server side (for reference and tests): the weighted mean and summed weight of `n` summed encodings. */
  decode(summed, contributors) {
    const c = this.config;
    if (summed.length !== this.encodedLength) throw new CodecError('wrong sum length');
    let total = 0;
    for (let j = 0; j < this.limbCount; j++) total += summed[this.dataLength + j] * 2 ** (this.limbBits * j);
    if (total > contributors * 2 ** c.weight_bits) throw new CodecError('summed weight is impossible');
    const weight = total / 2 ** c.weight_bits;
    const full = new Float64Array(this.dim);
    const half = 2 ** (c.bits - 1);
    let k = 0;
    for (let i = 0; i < this.dim; i++) {
      if (this.keptMask && !this.keptMask[i]) continue;
      const s = summed[k++];
      full[i] = (s >= half ? s - 2 ** c.bits : s) / this.scale;
    }
    if (this.keptMask) for (let i = 0; i < this.dim; i++) full[i] *= 1.0 / c.subsample_rate;
    if (c.rotation) {
      const m = this.mixingDim;
      if (m < this.dim) {
        const tail = full.subarray(this.dim - m);
        fwht(tail, false);
        applySigns(tail, c.seed, PURPOSE_SIGNS_TAIL);
      }
      const head = full.subarray(0, m);
      fwht(head, false);
      applySigns(head, c.seed, PURPOSE_SIGNS);
    }
    const mean = new Float32Array(this.dim);
    for (let i = 0; i < this.dim; i++) mean[i] = full[i] / weight;
    return { mean, weight };
  }
}
