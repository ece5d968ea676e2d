// numpy's SeedSequence + PCG64, bit for bit (docs/protocol.md §7.2 "Seeded streams").
//
// The codec's shared randomness (rotation signs, subsampling mask) is the raw 64-bit output of numpy's
// PCG64 seeded through SeedSequence(entropy, spawn_key=(purpose,)); both are stream-stable across numpy
// versions, which is why the protocol uses them. BigInt keeps the 128-bit arithmetic exact.

const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;
const POOL = 4;
const MASK128 = (1n << 128n) - 1n;
const MASK64 = (1n << 64n) - 1n;
const PCG_MULT = 0x2360ed051fc65da44385df649fccf645n;

const mul32 = (a, b) => Math.imul(a, b) >>> 0;

/** The 32-bit words of a non-negative BigInt, least significant first (at least one word). */
function words32(value) {
  const out = [];
  let v = value;
  do { out.push(Number(v & 0xffffffffn)); v >>= 32n; } while (v > 0n);
  return out;
}

/** SeedSequence(entropy, spawn_key).generate_state(n, uint32). */
export function seedSequenceState(entropy, spawnKey, nWords32) {
  let run = words32(entropy);
  const spawn = spawnKey.flatMap((k) => words32(BigInt(k)));
  if (spawn.length > 0 && run.length < POOL) run = run.concat(new Array(POOL - run.length).fill(0));
  const entropyArray = run.concat(spawn);
  let hashConst = INIT_A;
  const hashmix = (value) => {
    let v = (value ^ hashConst) >>> 0;
    hashConst = mul32(hashConst, MULT_A);
    v = mul32(v, hashConst);
    return (v ^ (v >>> XSHIFT)) >>> 0;
  };
  const mix = (x, y) => {
    let r = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
    return (r ^ (r >>> XSHIFT)) >>> 0;
  };
  const pool = new Array(POOL);
  for (let i = 0; i < POOL; i++) pool[i] = hashmix(i < entropyArray.length ? entropyArray[i] : 0);
  for (let src = 0; src < POOL; src++) {
    for (let dst = 0; dst < POOL; dst++) if (src !== dst) pool[dst] = mix(pool[dst], hashmix(pool[src]));
  }
  for (let src = POOL; src < entropyArray.length; src++) {
    for (let dst = 0; dst < POOL; dst++) pool[dst] = mix(pool[dst], hashmix(entropyArray[src]));
  }
  let hc = INIT_B;
  const out = new Array(nWords32);
  for (let i = 0; i < nWords32; i++) {
    let v = (pool[i % POOL] ^ hc) >>> 0;
    hc = mul32(hc, MULT_B);
    v = mul32(v, hc);
    out[i] = (v ^ (v >>> XSHIFT)) >>> 0;
  }
  return out;
}

export class PCG64 {
  /** PCG64(SeedSequence(entropy, spawn_key=spawnKey)) as numpy builds it. */
  constructor(entropy, spawnKey = []) {
    const w = seedSequenceState(entropy, spawnKey, 8);
    const u64 = (i) => (BigInt(w[2 * i + 1]) << 32n) | BigInt(w[2 * i]);
    const initstate = (u64(0) << 64n) | u64(1);
    const initseq = (u64(2) << 64n) | u64(3);
    this.inc = ((initseq << 1n) | 1n) & MASK128;
    this.state = 0n;
    this.step();
    this.state = (this.state + initstate) & MASK128;
    this.step();
  }

  step() { this.state = (this.state * PCG_MULT + this.inc) & MASK128; }

  /** Next raw 64-bit output (XSL-RR), as a BigInt. */
  next64() {
    this.step();
    const s = this.state;
    const x = ((s >> 64n) ^ s) & MASK64;
    const rot = Number(s >> 122n);
    return ((x >> BigInt(rot)) | (x << BigInt((64 - rot) & 63))) & MASK64;
  }
}

/** The stream of one use (`purpose`) of a 32-byte round seed: entropy = the seed read little-endian. */
export function seededBits(seed, purpose) {
  let entropy = 0n;
  for (let i = seed.length - 1; i >= 0; i--) entropy = (entropy << 8n) | BigInt(seed[i]);
  return new PCG64(entropy, [purpose]);
}
