// SecAgg+ device side (docs/protocol.md §4): key derivations, graph, Shamir, bundles, mask PRG and the
// per-round state machine. Mirrors shared/secagg/ and is checked against spec/vectors/.

import * as c from './crypto.js';
import { SecAggError } from './errors.js';
import { pack } from './msgpack.js';
import { advertDigest, checkCompact } from './roster.js';

export const DOMAIN = 'fedmq/secagg/v1';
export const SHARES_DOMAIN = 'fedmq/secagg/shares/v2';
export const CHUNK_COORDS = 1 << 16;
export const PRIME = (1n << 256n) + 297n;
export const SHARE_BYTES = 33;
export const SEALED_BYTES = 2 * SHARE_BYTES + 16;
export const DIGEST_BYTES = 16;

/** Code-point order of ASCII ids, as Python sorts str. */
export const byId = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
function byBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

// -- signed bytes (canonical lists) ----------------------------------------------------------------------

const sortedRows = (m) => Object.keys(m).sort(byId).map((k) => [k, m[k]]);

/** What a dealer signs over the digests of the bundles it dealt (ShareBatch.signature). */
export const digestsSignedBytes = (federation, round, dealer, digests) =>
  pack([DOMAIN, 'secagg.share_digests', federation, round, dealer, sortedRows(digests)]);

export function signedBytes(msg) {
  const f = msg;
  switch (msg.t) {
    case 'secagg.advertise_keys':
      return pack([DOMAIN, f.t, f.federation, f.round, f.device, f.enc_pk, f.mask_pk, f.self_mask_commitment]);
    case 'secagg.roster':
      return pack([DOMAIN, f.t, f.federation, f.round,
        f.members.map((m) => [m.device, m.enc_pk, m.mask_pk, m.self_mask_commitment, m.signature]),
        f.graph_seed, f.degree, f.threshold, f.bits, f.length]);
    case 'secagg.compact_roster':
      return pack([DOMAIN, f.t, f.federation, f.round, f.devices, f.digests, f.graph_seed, f.degree, f.threshold, f.bits, f.length]);
    case 'secagg.survivor_list':
      return pack([DOMAIN, f.t, f.federation, f.round, f.phase, [...f.devices].sort(byId)]);
    case 'secagg.masked_input': {
      // The refusal report is signed only when present, so older signatures still hold.
      const report = f.refused && f.refused.length ? [[...f.refused].sort(byId)] : [];
      return pack([DOMAIN, f.t, f.federation, f.round, f.device, c.blake2b(f.payload, { size: 32 }), f.bits, f.length, ...report]);
    }
    case 'secagg.seed_request':
      return pack([DOMAIN, f.t, f.federation, f.round, [...f.dealers].sort(byId),
        [...f.proofs].sort((a, b) => byId(a.dealer, b.dealer)).map((p) => [p.dealer, sortedRows(p.digests), p.digest_signature,
          sortedRows(p.shares), p.commitment, p.advert_signature])]);
    case 'secagg.seed_reveal':
      return pack([DOMAIN, f.t, f.federation, f.round, f.device, sortedRows(f.seeds)]);
    case 'secagg.unmask_reveal': {
      const rows = (m) => Object.keys(m).sort(byId).map((k) => [k, m[k]]);
      return pack([DOMAIN, f.t, f.federation, f.round, f.device, rows(f.self_mask_shares), rows(f.mask_key_shares)]);
    }
    default:
      throw new SecAggError(`${msg.t} is not signed`);
  }
}

export function advertOf(member, federation, round) {
  return { t: 'secagg.advertise_keys', federation, round, device: member.device, enc_pk: member.enc_pk,
    mask_pk: member.mask_pk, self_mask_commitment: member.self_mask_commitment, signature: member.signature };
}

// -- keys --------------------------------------------------------------------------------------------------

export const commitSelfMask = (seed) => c.blake2b(seed, { size: 32, person: 'fedmq.sa.cmt.v1' });

/** Round keys from three 32-byte secrets (fresh random ones unless given, e.g. by a test vector). */
export function roundKeys({ encSk = c.randomBytes(32), maskSk = c.randomBytes(32), selfMask = c.randomBytes(32) } = {}) {
  return { encSk, encPk: c.x25519Base(encSk), maskSk, maskPk: c.x25519Base(maskSk), selfMask, commitment: commitSelfMask(selfMask) };
}

export function pairSeed(maskSk, peerMaskPk, federation, round, a, b) {
  if (a === b) throw new SecAggError(`device ${a} cannot derive a pairwise seed with itself`);
  const shared = c.x25519(maskSk, peerMaskPk);
  const [low, high] = a < b ? [a, b] : [b, a];
  return c.blake2b(pack(['pair', federation, round, low, high]), { key: shared, size: 32, person: 'fedmq.sa.pair.v1' });
}

// -- graph -------------------------------------------------------------------------------------------------

/** The graph seed over every member's [id, 16-byte digest of its signed advert] (roster.js advertDigest). */
export function graphSeed(federation, round, rows) {
  const sorted = [...rows].sort((x, y) => byId(x[0], y[0]) || byBytes(x[1], y[1]));
  return c.blake2b(pack(['graph2', federation, round, sorted]), { size: 32, person: 'fedmq.sa.gseed2' });
}

/** The devices in ring order: sorted by BLAKE2b(key = seed, id). */
export function seededRing(ids, seed) {
  const keyOf = new Map(ids.map((d) => [d, c.blake2b(c.utf8(d), { key: seed, size: 64, person: 'fedmq.sa.graph1' })]));
  return [...ids].sort((a, b) => byBytes(keyOf.get(a), keyOf.get(b)));
}

export function neighbourGraph(members, k, seed) {
  const ids = [...new Set(members)].sort(byId);
  if (ids.length !== members.length) throw new SecAggError('neighbour graph: device ids must be unique');
  const n = ids.length;
  if (n < 2) throw new SecAggError(`neighbour graph needs at least 2 devices, got ${n}`);
  if (k >= n - 1) return Object.fromEntries(ids.map((u) => [u, ids.filter((v) => v !== u)]));
  if (k < 2 || k % 2) throw new SecAggError(`sparse neighbour graph needs an even degree >= 2, got ${k}`);
  const ring = seededRing(ids, seed);
  const sets = Object.fromEntries(ids.map((u) => [u, new Set()]));
  ring.forEach((u, i) => {
    for (let step = 1; step <= k / 2; step++) {
      const v = ring[(i + step) % n];
      sets[u].add(v); sets[v].add(u);
    }
  });
  return Object.fromEntries(ids.map((u) => [u, [...sets[u]].sort(byId)]));
}

// -- Shamir over GF(2^256 + 297) ---------------------------------------------------------------------------

const leToBig = (bytes) => { let v = 0n; for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]); return v; };
function bigToLe(v, size) { const out = new Uint8Array(size); for (let i = 0; i < size; i++) { out[i] = Number(v & 0xffn); v >>= 8n; } return out; }
const mod = (a) => ((a % PRIME) + PRIME) % PRIME;

/** A random coefficient as the protocol draws it: 48 random bytes, little-endian, mod p. */
export const randomCoefficient = () => leToBig(c.randomBytes(48)) % PRIME;

/** Shares of a 32-byte secret at x = 1..holders; `nextCoefficient()` supplies the t - 1 random ones. */
export function shamirSplit(secret, threshold, holders, nextCoefficient = randomCoefficient) {
  if (secret.length !== 32) throw new SecAggError('secret must be 32 bytes');
  if (!(threshold >= 1 && threshold <= holders)) throw new SecAggError('need 1 <= threshold <= holders');
  const coefficients = [leToBig(secret)];
  for (let i = 1; i < threshold; i++) coefficients.push(nextCoefficient());
  coefficients.reverse();
  const shares = [];
  for (let x = 1n; x <= BigInt(holders); x++) {
    let y = 0n;
    for (const co of coefficients) y = (y * x + co) % PRIME;
    shares.push(bigToLe(y, SHARE_BYTES));
  }
  return shares;
}

function modPow(b, e) { let r = 1n; b = mod(b); while (e > 0n) { if (e & 1n) r = (r * b) % PRIME; b = (b * b) % PRIME; e >>= 1n; } return r; }

export function lagrangeAtZero(xs) {
  return xs.map((xi, i) => {
    let num = 1n; let den = 1n;
    xs.forEach((xj, j) => { if (j !== i) { num = (num * BigInt(xj)) % PRIME; den = mod(den * (BigInt(xj) - BigInt(xi))); } });
    return (num * modPow(den, PRIME - 2n)) % PRIME;
  });
}

/** Secret from {x: share} using the `threshold` smallest x (the aggregator's step; here for tests). */
export function shamirReconstruct(shares, threshold) {
  const xs = Object.keys(shares).map(Number).sort((a, b) => a - b).slice(0, threshold);
  if (xs.length < threshold) throw new SecAggError('not enough shares');
  const ls = lagrangeAtZero(xs);
  let s = 0n;
  xs.forEach((x, i) => { s = (s + ls[i] * leToBig(shares[x])) % PRIME; });
  if (s >> 256n) throw new SecAggError('shares are inconsistent');
  return bigToLe(s, 32);
}

/**
 * Throw SecAggError unless `proof` shows that its dealer's self-mask shares (matching the digests it signed)
 * do not rebuild the commitment of its signed advert (shared/secagg/proofs.py). `identity` and `dealerKeys`
 * ({ encPk, maskPk }) come from this device's directory and roster, never from the proof.
 */
export function verifyProof(proof, { federation, round, identity, dealerKeys, threshold }) {
  const dealer = proof.dealer;
  const advert = { t: 'secagg.advertise_keys', federation, round, device: dealer, enc_pk: dealerKeys.encPk,
    mask_pk: dealerKeys.maskPk, self_mask_commitment: proof.commitment };
  if (!c.verify(identity, signedBytes(advert), proof.advert_signature)) throw new SecAggError(`bad signature on advert of ${dealer}`);
  const commitment = proof.commitment;
  if (!c.verify(identity, digestsSignedBytes(federation, round, dealer, proof.digests), proof.digest_signature)) {
    throw new SecAggError(`bad signature on digests of ${dealer}`);
  }
  const holders = Object.keys(proof.shares);
  if (holders.length !== threshold) throw new SecAggError(`proof against ${dealer} has ${holders.length} shares, needs ${threshold}`);
  const order = Object.keys(proof.digests).sort(byId);
  const points = {};
  for (const h of holders) {
    const digest = shareDigest(federation, round, dealer, h, 'self_mask', proof.shares[h]);
    if (!proof.digests[h] || !c.equal(proof.digests[h].slice(0, DIGEST_BYTES), digest)) {
      throw new SecAggError(`proof against ${dealer}: the share of ${h} is not the one it dealt`);
    }
    points[order.indexOf(h) + 1] = proof.shares[h];
  }
  let secret;
  try {
    if (Object.values(points).some((y) => leToBig(y) >= PRIME)) return; // not a field element: dealt wrong
    secret = shamirReconstruct(points, threshold);
  } catch { return; } // not a 32-byte value: no honest dealing gives that
  if (c.equal(commitSelfMask(secret), commitment)) throw new SecAggError(`proof against ${dealer} is forged: its shares rebuild the committed seed`);
}

// -- bundles -----------------------------------------------------------------------------------------------

export const bundleNonce = (federation, round, sender, recipient) =>
  c.blake2b(pack([SHARES_DOMAIN, federation, round, sender, recipient]), { size: 24 });

export function sealBundle(senderEncSk, recipientEncPk, federation, round, sender, recipient, selfMaskShare, maskKeyShare) {
  return c.boxSeal(c.concat(selfMaskShare, maskKeyShare), bundleNonce(federation, round, sender, recipient), recipientEncPk, senderEncSk);
}

/** The dealer's public digest of one share it dealt (docs/protocol.md: share digests). */
export function shareDigest(federation, round, owner, holder, kind, share) {
  const key = c.blake2b(pack([SHARES_DOMAIN, federation, round, owner, holder, kind]), { size: 32 });
  return c.blake2b(share, { key, size: DIGEST_BYTES, person: 'fedmq.sa.dgst.v1' });
}

/** Both shares' digests, published next to the bundle `owner` sealed for `holder` (32 bytes). */
export const bundleDigest = (federation, round, owner, holder, selfMaskShare, maskKeyShare) =>
  c.concat(shareDigest(federation, round, owner, holder, 'self_mask', selfMaskShare),
    shareDigest(federation, round, owner, holder, 'mask_key', maskKeyShare));

// A clamped X25519 scalar is a multiple of the cofactor 8: the product with a small-order point is zero.
const PROBE_SCALAR = new Uint8Array(32).fill(9);

/** Refuse a low-order (weak) X25519 public key, as keys.check_public_key does. */
export function checkPublicKey(publicKey, what) {
  if (publicKey.length !== 32) throw new SecAggError(`${what} must be 32 bytes`);
  let product;
  try { product = c.x25519(PROBE_SCALAR, publicKey); } catch { throw new SecAggError(`${what} is a low-order (weak) X25519 point`); }
  if (product.every((b) => b === 0)) throw new SecAggError(`${what} is a low-order (weak) X25519 point`);
}

export function openBundle(recipientEncSk, senderEncPk, ciphertext, federation, round, sender, recipient) {
  if (ciphertext.length !== SEALED_BYTES) throw new SecAggError(`share bundle ${sender} -> ${recipient} has ${ciphertext.length} bytes`);
  const plain = c.boxOpen(ciphertext, bundleNonce(federation, round, sender, recipient), senderEncPk, recipientEncSk);
  if (!plain) throw new SecAggError(`share bundle ${sender} -> ${recipient} does not decrypt under round ${round} of ${federation}`);
  return { sender, selfMaskShare: plain.slice(0, SHARE_BYTES), maskKeyShare: plain.slice(SHARE_BYTES) };
}

// -- mask PRG ----------------------------------------------------------------------------------------------

export function chunkSeed(seed, index) {
  const msg = new Uint8Array(8);
  new DataView(msg.buffer).setBigUint64(0, BigInt(index), true);
  return c.blake2b(msg, { key: seed, size: 32, person: 'fedmq.sa.prg.v1' });
}

const widthOf = (bits) => (bits <= 8 ? 1 : bits <= 16 ? 2 : 4);

/** The first `coords` raw (unreduced) coordinates of chunk `index` of PRG(seed). */
export function expandChunk(seed, index, coords, bits) {
  const w = widthOf(bits);
  const raw = c.deterministicBytes(coords * w, chunkSeed(seed, index));
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Uint32Array(coords);
  for (let i = 0; i < coords; i++) out[i] = w === 1 ? raw[i] : w === 2 ? view.getUint16(2 * i, true) : view.getUint32(4 * i, true);
  return out;
}

/** sum PRG(plus) - sum PRG(minus) mod 2^bits on [start, stop). */
export function combinedMask(plus, minus, bits, start, stop) {
  const out = new Uint32Array(stop - start);
  const first = Math.floor(start / CHUNK_COORDS);
  const last = stop > start ? Math.floor((stop - 1) / CHUNK_COORDS) : first - 1;
  for (let chunk = first; chunk <= last; chunk++) {
    const lo = chunk * CHUNK_COORDS;
    const hi = Math.min(lo + CHUNK_COORDS, stop);
    const acc = new Uint32Array(hi - lo);
    for (const s of plus) { const e = expandChunk(s, chunk, hi - lo, bits); for (let i = 0; i < acc.length; i++) acc[i] += e[i]; }
    for (const s of minus) { const e = expandChunk(s, chunk, hi - lo, bits); for (let i = 0; i < acc.length; i++) acc[i] -= e[i]; }
    const from = Math.max(start - lo, 0);
    out.set(acc.subarray(from), lo + from - start);
  }
  const m = bits === 32 ? 0xffffffff : 2 ** bits - 1;
  for (let i = 0; i < out.length; i++) out[i] = (out[i] & m) >>> 0;
  return out;
}

// -- the device state machine -------------------------------------------------------------------------------

/**
 * One device's SecAgg+ state, one round at a time, no I/O (the MQTT layer feeds it decoded messages).
 * `identity` is `{ publicKey, secretKey }` (Ed25519), `aggregatorKey` the aggregator's public key and
 * `directory` maps enrolled device ids to public keys. Every refusal throws SecAggError.
 */
export class SecAggClient {
  constructor({ federation, deviceId, identity, aggregatorKey, directory, minThreshold = 2, log = () => {} }) {
    Object.assign(this, { federation, deviceId, identity, aggregatorKey, directory, minThreshold, log });
    this.lastRound = -1;
    this.state = null;
  }

  refuse(round, reason) {
    this.log(`secagg refusal round=${round} device=${this.deviceId}: ${reason}`);
    return new SecAggError(`device ${this.deviceId} round ${round}: ${reason}`);
  }

  current(federation, round, what) {
    if (federation !== this.federation) throw this.refuse(round, `${what} is for federation ${federation}`);
    if (!this.state || round !== this.state.round) throw this.refuse(round, `${what} is not for this round`);
    return this.state;
  }

  /** Round 0: fresh keys (or `keys` from roundKeys()) and the signed advert. */
  advertise(round, keys = roundKeys()) {
    if (round <= this.lastRound) throw this.refuse(round, `round ${round} is not after round ${this.lastRound}`);
    const advert = { t: 'secagg.advertise_keys', federation: this.federation, round, device: this.deviceId,
      enc_pk: keys.encPk, mask_pk: keys.maskPk, self_mask_commitment: keys.commitment };
    advert.signature = c.sign(this.identity.secretKey, signedBytes(advert));
    this.lastRound = round;
    this.state = { round, keys, advert, roster: null, neighbours: [], peers: {}, outgoing: null, received: {},
      shared: null, masked: null, revealed: {}, reveal: null, survivorsKey: null, refused: new Set(), seedRequest: null, seedReveal: null };
    return advert;
  }

  verifyNotice(notice, phase) {
    const st = this.current(notice.federation, notice.round, `${phase} notice`);
    if (!st.roster) throw this.refuse(notice.round, `${phase} notice before the roster`);
    if (notice.phase !== phase) throw this.refuse(notice.round, `expected a ${phase} notice, got ${notice.phase}`);
    if (!c.verify(this.aggregatorKey, signedBytes(notice), notice.signature)) throw this.refuse(notice.round, `bad signature on ${phase} notice`);
    const members = new Set(st.roster.devices ?? st.roster.members.map((m) => m.device));
    if (!notice.devices.every((d) => members.has(d))) throw this.refuse(notice.round, `${phase} notice names devices outside the roster`);
    if (!notice.devices.includes(this.deviceId)) throw this.refuse(notice.round, `${phase} notice does not list this device`);
    if (notice.devices.length < st.roster.threshold) throw this.refuse(notice.round, `${phase} set below the threshold`);
    return st;
  }

  /** Round 1: verify the roster; returns `{ recipient: ciphertext }` for the share batch. */
  onRoster(roster, nextCoefficient = randomCoefficient) {
    const st = this.current(roster.federation, roster.round, 'roster');
    if (st.roster) {
      if (c.equal(signedBytes(roster), signedBytes(st.roster)) && c.equal(roster.signature, st.roster.signature)) return { ...st.outgoing };
      throw this.refuse(roster.round, 'a second, different roster for the same round');
    }
    if (!c.verify(this.aggregatorKey, signedBytes(roster), roster.signature)) throw this.refuse(roster.round, 'bad signature on roster');
    const peers = {};
    for (const m of roster.members) {
      const id = this.directory[m.device];
      if (!id) throw this.refuse(roster.round, `roster lists unenrolled device ${m.device}`);
      if (peers[m.device]) throw this.refuse(roster.round, `roster lists ${m.device} twice`);
      if (!c.verify(id, signedBytes(advertOf(m, roster.federation, roster.round)), m.signature)) {
        throw this.refuse(roster.round, `bad signature on keys of ${m.device} (swapped or forged key)`);
      }
      try {
        checkPublicKey(m.enc_pk, `encryption key of ${m.device}`);
        checkPublicKey(m.mask_pk, `mask key of ${m.device}`);
      } catch (e) { throw this.refuse(roster.round, e.message); }
      peers[m.device] = { encPk: m.enc_pk, maskPk: m.mask_pk };
    }
    const mine = peers[this.deviceId];
    if (!mine || !c.equal(mine.encPk, st.keys.encPk) || !c.equal(mine.maskPk, st.keys.maskPk)) {
      throw this.refuse(roster.round, "roster does not carry this device's own keys");
    }
    const rows = roster.members.map((m) => [m.device, advertDigest(advertOf(m, roster.federation, roster.round))]);
    if (!c.equal(roster.graph_seed, graphSeed(roster.federation, roster.round, rows))) throw this.refuse(roster.round, 'graph seed does not match the roster');
    const graph = neighbourGraph(Object.keys(peers), roster.degree, roster.graph_seed);
    return this.deal(st, roster, graph[this.deviceId], peers, nextCoefficient);
  }

  /** Round 1, compact roster (roster.js): verify it and this device's neighbour keys; as onRoster returns. */
  onCompactRoster(roster, slice, nextCoefficient = randomCoefficient) {
    const st = this.current(roster.federation, roster.round, 'roster');
    if (st.roster) {
      if (c.equal(signedBytes(roster), signedBytes(st.roster)) && c.equal(roster.signature, st.roster.signature)) return { ...st.outgoing };
      throw this.refuse(roster.round, 'a second, different roster for the same round');
    }
    let checked;
    try {
      checked = checkCompact(roster, slice, { deviceId: this.deviceId, own: st.advert, aggregatorKey: this.aggregatorKey, directory: this.directory });
    } catch (e) { throw this.refuse(roster.round, e.message); }
    return this.deal(st, roster, checked.neighbours, checked.peers, nextCoefficient);
  }

  /** Shamir-share the self-mask seed and the mask key among the verified neighbours; seal one bundle each. */
  deal(st, roster, neighbours, peers, nextCoefficient) {
    const t = roster.threshold;
    if (2 * t <= neighbours.length || t < this.minThreshold || t > neighbours.length) {
      throw this.refuse(roster.round, `threshold ${t} unsafe for ${neighbours.length} neighbours (need k/2 < t <= k)`);
    }
    const bShares = shamirSplit(st.keys.selfMask, t, neighbours.length, nextCoefficient);
    const kShares = shamirSplit(st.keys.maskSk, t, neighbours.length, nextCoefficient);
    const outgoing = {};
    const digests = {};
    neighbours.forEach((v, i) => {
      outgoing[v] = sealBundle(st.keys.encSk, peers[v].encPk, this.federation, roster.round, this.deviceId, v, bShares[i], kShares[i]);
      digests[v] = bundleDigest(this.federation, roster.round, this.deviceId, v, bShares[i], kShares[i]);
    });
    Object.assign(st, { roster, neighbours, peers, outgoing, digests });
    return { ...outgoing };
  }

  /** The digests of this round's outgoing bundles, keyed like onRoster's ciphertexts (ShareBatch.digests). */
  outgoingDigests() {
    return { ...(this.state?.digests ?? {}) };
  }

  /** Open the bundles of an inbox share batch (device = this device, keys = senders). */
  onInbox(batch) {
    const st = this.current(batch.federation, batch.round, 'share batch');
    if (!st.roster) throw this.refuse(batch.round, 'share bundle before the roster');
    if (batch.device !== this.deviceId) throw this.refuse(batch.round, `share batch addressed to ${batch.device}`);
    if (st.shared) throw this.refuse(batch.round, 'share bundle after the share phase closed');
    // Every bundle is opened on its own: a bad one (garbage, re-wrapped, off its digests) only means this
    // device holds no share of that sender; the refusals are returned, never thrown.
    const refused = {};
    const digests = batch.digests ?? {};
    for (const [sender, ciphertext] of Object.entries(batch.ciphertexts)) {
      try {
        if (!st.neighbours.includes(sender)) throw new SecAggError(`share bundle from non-neighbour ${sender}`);
        const bundle = openBundle(st.keys.encSk, st.peers[sender].encPk, ciphertext, this.federation, batch.round, sender, this.deviceId);
        const digest = digests[sender];
        if (digest && digest.length && !c.equal(digest, bundleDigest(this.federation, batch.round, sender, this.deviceId, bundle.selfMaskShare, bundle.maskKeyShare))) {
          throw new SecAggError(`bundle from ${sender} does not match its published digests`);
        }
        const earlier = st.received[sender];
        if (earlier && !(c.equal(earlier.selfMaskShare, bundle.selfMaskShare) && c.equal(earlier.maskKeyShare, bundle.maskKeyShare))) {
          throw new SecAggError(`${sender} sent two different share bundles`);
        }
        st.received[sender] = bundle;
      } catch (e) {
        refused[sender] = this.refuse(batch.round, e.message).message;
      }
    }
    for (const sender of Object.keys(refused)) st.refused.add(sender); // reported with the masked input
    return refused;
  }

  /** This dealer's signature over its digests (ShareBatch.signature: what an inconsistency proof rests on). */
  digestSignature() {
    const st = this.state;
    return c.sign(this.identity.secretKey, digestsSignedBytes(this.federation, st.round, this.deviceId, st.digests ?? {}));
  }

  /** Round 2: mask `x` (Uint32Array of roster.length values < 2^bits) for the signed U2 notice, in place. */
  mask(x, shared) {
    const st = this.verifyNotice(shared, 'shared');
    const u2 = new Set(shared.devices);
    if (st.shared && (st.shared.size !== u2.size || [...u2].some((d) => !st.shared.has(d)))) throw this.refuse(shared.round, 'a second, different shared-set notice');
    const live = st.neighbours.filter((v) => u2.has(v));
    if (live.length < st.roster.threshold) throw this.refuse(shared.round, `only ${live.length} neighbours in U2, below the threshold`);
    if (st.masked) throw this.refuse(shared.round, "this round's input is already masked (one input per round)");
    const { bits, length } = st.roster;
    if (x.length !== length) throw this.refuse(shared.round, `input must have ${length} coordinates, got ${x.length}`);
    const plus = [st.keys.selfMask];
    const minus = [];
    for (const v of live) (this.deviceId < v ? plus : minus).push(pairSeed(st.keys.maskSk, st.peers[v].maskPk, this.federation, shared.round, this.deviceId, v));
    const m = bits === 32 ? 0xffffffff : 2 ** bits - 1;
    for (let start = 0; start < length; start += CHUNK_COORDS) {
      const stop = Math.min(start + CHUNK_COORDS, length);
      const maskPart = combinedMask(plus, minus, bits, start, stop);
      for (let i = start; i < stop; i++) x[i] = ((x[i] + maskPart[i - start]) & m) >>> 0;
    }
    st.shared = u2;
    st.masked = x;
    return x;
  }

  /** The signed masked-input message for the packed vector. */
  maskedInput(payload) {
    const st = this.state;
    if (!st || !st.masked) throw this.refuse(st?.round, 'nothing masked this round');
    const refused = [...st.refused].filter((s) => !st.received[s]).sort(byId);
    const msg = { t: 'secagg.masked_input', federation: this.federation, round: st.round, device: this.deviceId,
      payload, bits: st.roster.bits, length: st.roster.length, refused };
    msg.signature = c.sign(this.identity.secretKey, signedBytes(msg));
    return msg;
  }

  /** Round 3: the signed reveal for the U3 notice; never both kinds of share for one neighbour. */
  onSurvivors(survivors) {
    const st = this.verifyNotice(survivors, 'masked');
    if (!st.shared || !st.masked) throw this.refuse(survivors.round, 'survivor list before this device masked its input');
    const u3 = new Set(survivors.devices);
    if ([...u3].some((d) => !st.shared.has(d))) throw this.refuse(survivors.round, 'survivor list names devices outside the shared set');
    const key = [...u3].sort(byId).join('\n');
    if (st.reveal && st.survivorsKey === key) return st.reveal;
    const live = st.neighbours.filter((v) => u3.has(v));
    if (live.length < st.roster.threshold) throw this.refuse(survivors.round, `only ${live.length} neighbours survived, below the threshold`);
    const wanted = {};
    for (const v of st.neighbours) {
      if (v === this.deviceId || !st.shared.has(v) || !st.received[v]) continue;
      wanted[v] = u3.has(v) ? 'self_mask' : 'mask_key';
    }
    const clash = Object.keys(wanted).filter((v) => (st.revealed[v] ?? wanted[v]) !== wanted[v]);
    if (clash.length) throw this.refuse(survivors.round, `double reveal asked for ${clash.sort(byId)}`);
    const selfMaskShares = {};
    const maskKeyShares = {};
    for (const [v, kind] of Object.entries(wanted)) {
      if (kind === 'self_mask') selfMaskShares[v] = st.received[v].selfMaskShare; else maskKeyShares[v] = st.received[v].maskKeyShare;
    }
    const reveal = { t: 'secagg.unmask_reveal', federation: this.federation, round: survivors.round, device: this.deviceId,
      self_mask_shares: selfMaskShares, mask_key_shares: maskKeyShares };
    reveal.signature = c.sign(this.identity.secretKey, signedBytes(reveal));
    Object.assign(st.revealed, wanted);
    st.survivorsKey = key;
    st.reveal = reveal;
    return reveal;
  }

  /**
   * After this device's reveal: the signed pair seeds for the requested dealers it masked with
   * (shared/secagg/seeds.py). A dealer whose self-mask share it revealed needs a valid inconsistency proof.
   */
  onSeedRequest(request) {
    const st = this.current(request.federation, request.round, 'seed request');
    if (!c.verify(this.aggregatorKey, signedBytes(request), request.signature)) throw this.refuse(request.round, 'bad signature on seed request');
    if (!st.reveal || !st.roster || !st.shared) throw this.refuse(request.round, 'seed request before this device revealed');
    if (request.dealers.includes(this.deviceId)) throw this.refuse(request.round, "this device's own input was excluded");
    if (st.seedReveal) {
      if (c.equal(signedBytes(request), signedBytes(st.seedRequest))) return st.seedReveal;
      throw this.refuse(request.round, 'a second, different seed request');
    }
    const seeds = {};
    for (const v of [...request.dealers].sort(byId)) {
      if (!st.neighbours.includes(v) || !st.shared.has(v)) continue;
      const kind = st.revealed[v];
      if (kind && kind !== 'pair_seed' && kind !== 'mask_key') {
        const proof = request.proofs.find((p) => p.dealer === v);
        if (!proof) throw this.refuse(request.round, `pair seed with ${v} asked without proof after its self-mask share`);
        try {
          verifyProof(proof, { federation: this.federation, round: request.round, identity: this.directory[v], dealerKeys: st.peers[v], threshold: st.roster.threshold });
        } catch (e) { throw this.refuse(request.round, `seed request refused: ${e.message}`); }
      }
      seeds[v] = pairSeed(st.keys.maskSk, st.peers[v].maskPk, this.federation, request.round, this.deviceId, v);
    }
    // Privacy floor: at least t neighbours whose pair seeds this device never reveals (dropped ones count as
    // revealed), whatever bundles the aggregator kept from it (docs/security.md).
    const u3 = new Set(st.survivorsKey.split('\n'));
    const keptSecret = st.neighbours.filter((v) => st.shared.has(v) && u3.has(v) && !(v in seeds));
    if (keptSecret.length < st.roster.threshold) {
      throw this.refuse(request.round, `revealing ${Object.keys(seeds).length} pair seeds would leave ${keptSecret.length} unrevealed, below the threshold`);
    }
    const reveal = { t: 'secagg.seed_reveal', federation: this.federation, round: request.round, device: this.deviceId, seeds };
    reveal.signature = c.sign(this.identity.secretKey, signedBytes(reveal));
    for (const v of Object.keys(seeds)) st.revealed[v] ??= 'pair_seed';
    Object.assign(st, { seedRequest: request, seedReveal: reveal });
    return reveal;
  }
}
