// The compact roster (docs/protocol.md §4; shared/secagg/roster.py): every member as (id, 16-byte digest
// of its signed advert) in one aggregator-signed message, and the signed adverts of exactly this device's
// k neighbours in its inbox. A device recomputes the seed and its ring neighbourhood from the compact list
// and checks each neighbour advert's signature and digest.

import * as c from './crypto.js';
import { SecAggError } from './errors.js';
import { advertOf, byId, checkPublicKey, graphSeed, seededRing, signedBytes } from './secagg.js';

export const ADVERT_DIGEST_BYTES = 16;

/** BLAKE2b-128 of a signed advert's signed bytes followed by its signature. */
export function advertDigest(advert) {
  const body = signedBytes(advert);
  const whole = new Uint8Array(body.length + advert.signature.length);
  whole.set(body); whole.set(advert.signature, body.length);
  return c.blake2b(whole, { size: ADVERT_DIGEST_BYTES, person: 'fedmq.sa.advd1' });
}

export const NEIGHBOUR_ENTRY_BYTES = 160;

/** The neighbour keys as roster members: per id, enc_pk | mask_pk | self_mask_commitment | signature. */
export function neighbourEntries(slice) {
  return slice.members.map((device, i) => {
    const row = slice.keys.subarray(i * NEIGHBOUR_ENTRY_BYTES, (i + 1) * NEIGHBOUR_ENTRY_BYTES);
    return { device, enc_pk: row.subarray(0, 32), mask_pk: row.subarray(32, 64), self_mask_commitment: row.subarray(64, 96), signature: row.subarray(96) };
  });
}

/** Neighbour keys for `device` from roster members (the inverse of neighbourEntries). */
export function packNeighbourKeys(federation, round, device, members) {
  const keys = new Uint8Array(NEIGHBOUR_ENTRY_BYTES * members.length);
  members.forEach((m, i) => keys.set([...m.enc_pk, ...m.mask_pk, ...m.self_mask_commitment, ...m.signature], i * NEIGHBOUR_ENTRY_BYTES));
  return { t: 'secagg.neighbour_keys', federation, round, device, members: members.map((m) => m.device), keys };
}

export const digestAt = (roster, i) => roster.digests.subarray(i * ADVERT_DIGEST_BYTES, (i + 1) * ADVERT_DIGEST_BYTES);

/** One device's neighbours (sorted) in neighbourGraph(members, k, seed), from its ring positions only. */
export function neighboursOf(members, k, seed, device) {
  const ids = [...new Set(members)].sort(byId);
  if (ids.length !== members.length || !ids.includes(device)) throw new SecAggError('neighboursOf: ids must be unique and include the device');
  const n = ids.length;
  if (n < 2 || seed.length !== 32) throw new SecAggError('neighboursOf: needs at least 2 devices and a 32-byte seed');
  if (k >= n - 1) return ids.filter((v) => v !== device);
  if (k < 2 || k % 2) throw new SecAggError(`sparse neighbour graph needs an even degree >= 2, got ${k}`);
  const ring = seededRing(ids, seed);
  const i = ring.indexOf(device);
  const out = new Set();
  for (let s = 1; s <= k / 2; s++) { out.add(ring[(i + s) % n]); out.add(ring[(i - s + n) % n]); }
  return [...out].sort(byId);
}

/** Verify a compact roster and this device's neighbour keys; returns { neighbours, peers } or throws. */
export function checkCompact(roster, slice, { deviceId, own, aggregatorKey, directory }) {
  if (!c.verify(aggregatorKey, signedBytes(roster), roster.signature)) throw new SecAggError('bad signature on roster');
  if (slice.federation !== roster.federation || slice.round !== roster.round || slice.device !== deviceId) {
    throw new SecAggError('neighbour keys are for another round, federation or device');
  }
  const index = new Map(roster.devices.map((d, i) => [d, i]));
  const unenrolled = roster.devices.find((d) => !directory[d]);
  if (unenrolled !== undefined) throw new SecAggError(`roster lists unenrolled device ${unenrolled}`);
  if (!index.has(deviceId) || !c.equal(digestAt(roster, index.get(deviceId)), advertDigest(own))) {
    throw new SecAggError("roster does not carry this device's own keys");
  }
  const pairs = roster.devices.map((d, i) => [d, digestAt(roster, i)]);
  if (!c.equal(roster.graph_seed, graphSeed(roster.federation, roster.round, pairs))) throw new SecAggError('graph seed does not match the roster');
  const neighbours = neighboursOf(roster.devices, roster.degree, roster.graph_seed, deviceId);
  const delivered = [...slice.members].sort(byId);
  if (delivered.length !== neighbours.length || delivered.some((d, i) => d !== neighbours[i])) {
    throw new SecAggError("neighbour keys are not this device's neighbours in the graph");
  }
  const peers = {};
  for (const m of neighbourEntries(slice)) {
    const advert = advertOf(m, roster.federation, roster.round);
    if (!c.verify(directory[m.device], signedBytes(advert), m.signature)) throw new SecAggError(`bad signature on keys of ${m.device} (swapped or forged key)`);
    if (!c.equal(advertDigest(advert), digestAt(roster, index.get(m.device)))) throw new SecAggError(`keys of ${m.device} do not match their digest in the roster`);
    checkPublicKey(m.enc_pk, `encryption key of ${m.device}`);
    checkPublicKey(m.mask_pk, `mask key of ${m.device}`);
    peers[m.device] = { encPk: m.enc_pk, maskPk: m.mask_pk };
  }
  return { neighbours, peers };
}
