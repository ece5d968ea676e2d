// The JS client against spec/vectors/: codec, snapshots, signatures and a recorded secure round.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import * as bitpack from '../src/bitpack.js';
import { codecConfig, UpdateEncoder } from '../src/codec.js';
import * as c from '../src/crypto.js';
import { CodecError, ProtocolError, SecAggError } from '../src/errors.js';
import { neighbourEntries, packNeighbourKeys } from '../src/roster.js';
import * as sa from '../src/secagg.js';
import { applyDelta, snapshotWeights, verifyMapSigned } from '../src/snapshot.js';
import { Topics } from '../src/topics.js';
import { decode, encode } from '../src/wire.js';
import { f32, f64s, fromHex, load, replay, toHex, untyped } from './helpers.js';

before(async () => { await c.ready(); });

const f32hex = (arr) => toHex(new Uint8Array(Float32Array.from(arr).buffer));

test('codec: encode reproduces every stage, decode the recorded mean', () => {
  for (const kase of load('codec').cases) {
    const config = codecConfig(untyped(kase.config));
    const enc = new UpdateEncoder(config, kase.dim);
    assert.equal(enc.scale, kase.scale, kase.name);
    assert.equal(enc.dataLength, kase.kept, kase.name);
    assert.equal(enc.limbBits, kase.limb_bits);
    assert.equal(enc.encodedLength, kase.encoded_length);
    if (enc.keptMask) assert.deepEqual([...enc.keptMask], kase.kept_mask);
    const delta = f32(kase.delta_f32);
    assert.equal(enc.gridWeight(kase.weight), kase.grid_weight);
    const rotated = Float32Array.from(f32(kase.scaled_f32));
    if (config.rotation) enc.rotate(rotated);
    assert.equal(f32hex(rotated), kase.rotated_f32, kase.name);
    const encoded = enc.encode(delta, kase.weight, replay(f64s(kase.uniforms_f64)));
    assert.deepEqual([...encoded], kase.encoded, kase.name);
    assert.equal(toHex(bitpack.pack(encoded, config.bits)), kase.packed);
    const { mean, weight } = enc.decode(Uint32Array.from(kase.decode.sum), kase.decode.contributors);
    assert.equal(toHex(new Uint8Array(mean.buffer)), kase.decode.mean_f32, kase.name);
    assert.equal(weight, kase.decode.summed_weight);
  }
});

test('codec: refuses the trusted-only schemes and impossible widths', () => {
  const seed = new Uint8Array(32);
  assert.throws(() => codecConfig({ bits: 16, clip_norm: 1, expected_clients: 2, seed, scheme: 'topk' }), CodecError);
  assert.throws(() => codecConfig({ bits: 3, clip_norm: 1, expected_clients: 5, seed }), CodecError);
});

test('snapshots: every body encoding decodes to the recorded weights; forgeries fail', () => {
  const v = load('snapshot');
  const key = fromHex(v.aggregator_public_key);
  for (const kase of v.cases) {
    const { weights } = snapshotWeights(fromHex(kase.message), key);
    assert.equal(toHex(new Uint8Array(weights.buffer)), kase.decoded_f32, kase.encoding);
    const forged = decode(fromHex(kase.message));
    forged.round_id += 1;
    assert.throws(() => snapshotWeights(encode(forged), key), ProtocolError);
  }
  const base = f32(v.cases.find((x) => x.encoding === v.delta.base_case).decoded_f32);
  const { weights } = applyDelta(fromHex(v.delta.message), base, key);
  assert.equal(toHex(new Uint8Array(weights.buffer)), v.delta.result_f32);
  const wrongBase = base.map((x) => x + 1);
  assert.throws(() => applyDelta(fromHex(v.delta.message), wrongBase, key), CodecError);
});

test('signatures: map form on received bytes, canonical lists for secure aggregation', () => {
  const v = load('signatures');
  const agg = fromHex(v.aggregator_public_key);
  for (const kase of v.map_form) {
    if (kase.valid) verifyMapSigned(fromHex(kase.message), 'round', agg);
    else assert.throws(() => verifyMapSigned(fromHex(kase.message), 'round', agg), ProtocolError);
  }
  for (const kase of v.secagg) {
    const msg = decode(fromHex(kase.message));
    assert.equal(toHex(sa.signedBytes(msg)), kase.signed_bytes, kase.name);
    assert.equal(c.verify(fromHex(kase.signer), sa.signedBytes(msg), msg.signature), kase.valid, kase.name);
  }
});

test('pair-seed step: signed lists of its messages, and inconsistency proofs accepted or refused', () => {
  const v = load('seeds');
  for (const kase of v.signatures) {
    const msg = decode(fromHex(kase.message));
    assert.equal(toHex(sa.signedBytes(msg)), kase.signed_bytes, kase.name);
    assert.equal(c.verify(fromHex(kase.signer), sa.signedBytes(msg), msg.signature), kase.valid, kase.name);
  }
  const request = decode(fromHex(v.signatures[1].message));
  assert.equal(toHex(sa.digestsSignedBytes(v.federation, v.round, v.dealer, request.proofs[0].digests)), v.digests_signed_bytes);
  const context = { federation: v.federation, round: v.round, identity: fromHex(v.dealer_public_key),
    dealerKeys: { encPk: fromHex(v.dealer_enc_pk), maskPk: fromHex(v.dealer_mask_pk) }, threshold: v.threshold };
  for (const kase of v.proofs) {
    const proof = decode(fromHex(kase.request), 'secagg.seed_request').proofs[0];
    if (kase.valid) sa.verifyProof(proof, context);
    else assert.throws(() => sa.verifyProof(proof, context), SecAggError, kase.name);
  }
});

test('recorded round: a JS device fed the same secrets emits every payload byte for byte', () => {
  const v = load('round');
  const t = new Topics(v.federation);
  const directory = Object.fromEntries(Object.entries(v.directory).map(([d, k]) => [d, fromHex(k)]));
  const aggKey = c.ed25519FromSeed(fromHex(v.aggregator_identity_seed)).publicKey;
  const sent = new Map(v.messages.map((m) => [`${m.from} ${m.topic}`, m.payload]));
  const notices = v.messages.filter((m) => m.topic === t.notice).map((m) => decode(fromHex(m.payload)));
  const roster = decode(fromHex(v.messages.find((m) => m.topic === t.roster).payload));
  assert.equal(roster.t, 'secagg.compact_roster');
  const announce = verifyMapSigned(fromHex(v.messages.find((m) => m.topic === t.round).payload), 'round', aggKey);
  const config = codecConfig(announce.plan.codec, { expected_clients: roster.devices.length });
  let sum = new Uint32Array(roster.length);
  for (const d of v.devices) {
    const s = v.secrets[d];
    const client = new sa.SecAggClient({ federation: v.federation, deviceId: d, identity: c.ed25519FromSeed(fromHex(s.identity_seed)),
      aggregatorKey: aggKey, directory });
    const keys = sa.roundKeys({ encSk: fromHex(s.enc_sk), maskSk: fromHex(s.mask_sk), selfMask: fromHex(s.self_mask) });
    const advert = client.advertise(v.round, keys);
    assert.equal(toHex(encode(advert)), sent.get(`${d} ${t.roundMsg(v.round, 'keys', d)}`));
    const coefficients = s.shamir_coefficients.map((h) => BigInt(`0x${h}`));
    const slice = neighbourKeysOf(v, t, d);
    const ciphertexts = client.onCompactRoster(roster, slice, () => coefficients.shift());
    const batch = { t: 'secagg.share_batch', federation: v.federation, round: v.round, device: d, ciphertexts,
      digests: client.outgoingDigests(), signature: client.digestSignature() };
    assert.equal(toHex(encode(batch)), sent.get(`${d} ${t.roundMsg(v.round, 'shares', d)}`));
    assert.deepEqual(client.onCompactRoster(roster, slice), ciphertexts, 'a duplicate roster is idempotent');
    client.onInbox(decode(fromHex(sent.get(`aggregator ${t.inbox(d)}`))));
    const inputs = v.inputs[d];
    const encoder = new UpdateEncoder(config, v.dim);
    const x = encoder.encode(f32(inputs.delta_f32), inputs.weight, replay(f64s(inputs.uniforms_f64)));
    assert.deepEqual([...x], inputs.encoded);
    if (d === v.dropped) continue;
    sum = sum.map((a, i) => (a + x[i]) % 2 ** roster.bits);
    const y = client.mask(x, notices[0]);
    assert.deepEqual([...y], inputs.masked);
    const masked = client.maskedInput(bitpack.pack(y, roster.bits));
    assert.equal(toHex(encode(masked)), sent.get(`${d} ${t.roundMsg(v.round, 'masked', d)}`));
    const reveal = client.onSurvivors(notices[1]);
    assert.equal(toHex(encode(reveal)), sent.get(`${d} ${t.roundMsg(v.round, 'unmask', d)}`));
    assert.throws(() => client.onSurvivors({ ...notices[1], devices: notices[1].devices.filter((x2) => x2 !== v.devices[0]) }), SecAggError);
  }
  assert.deepEqual([...sum], v.sum, 'the survivors\' encodings sum to the recorded unmasked sum');
});

/** The neighbour keys the aggregator sent to `d`'s inbox (the first inbox message; the share batch follows). */
function neighbourKeysOf(v, t, d) {
  return decode(fromHex(v.messages.find((m) => m.topic === t.inbox(d)).payload));
}

/** The full roster the compact one stands for (every device's own advert is in some neighbour's keys). */
function fullRosterOf(v, t, roster, aggSeed) {
  const byId = {};
  for (const d of roster.devices) for (const m of neighbourEntries(neighbourKeysOf(v, t, d))) byId[m.device] = m;
  const full = { t: 'secagg.roster', federation: roster.federation, round: roster.round, members: roster.devices.map((d) => byId[d]),
    graph_seed: roster.graph_seed, degree: roster.degree, threshold: roster.threshold, bits: roster.bits, length: roster.length };
  full.signature = c.sign(c.ed25519FromSeed(aggSeed).secretKey, sa.signedBytes(full));
  return full;
}

test('recorded round: pair seeds only for a dropped dealer, or a survivor with a valid proof', () => {
  const v = load('round');
  const t = new Topics(v.federation);
  const directory = Object.fromEntries(Object.entries(v.directory).map(([d, k]) => [d, fromHex(k)]));
  const agg = c.ed25519FromSeed(fromHex(v.aggregator_identity_seed));
  const sent = new Map(v.messages.map((m) => [`${m.from} ${m.topic}`, m.payload]));
  const notices = v.messages.filter((m) => m.topic === t.notice).map((m) => decode(fromHex(m.payload)));
  const roster = decode(fromHex(v.messages.find((m) => m.topic === t.roster).payload));
  const d = v.devices.find((x) => x !== v.dropped);
  const s = v.secrets[d];
  const client = new sa.SecAggClient({ federation: v.federation, deviceId: d, identity: c.ed25519FromSeed(fromHex(s.identity_seed)),
    aggregatorKey: agg.publicKey, directory });
  const keys = sa.roundKeys({ encSk: fromHex(s.enc_sk), maskSk: fromHex(s.mask_sk), selfMask: fromHex(s.self_mask) });
  client.advertise(v.round, keys);
  client.onCompactRoster(roster, neighbourKeysOf(v, t, d));
  client.onInbox(decode(fromHex(sent.get(`aggregator ${t.inbox(d)}`))));
  client.mask(new Uint32Array(roster.length), notices[0]);
  const signed = (dealers) => {
    const request = { t: 'secagg.seed_request', federation: v.federation, round: v.round, dealers, proofs: [] };
    request.signature = c.sign(agg.secretKey, sa.signedBytes(request));
    return request;
  };
  assert.throws(() => client.onSeedRequest(signed([v.dropped])), SecAggError, 'not before this device revealed');
  client.onSurvivors(notices[1]);
  const survivor = notices[1].devices.find((x) => x !== d);
  assert.throws(() => client.onSeedRequest(signed([survivor])), SecAggError, 'a survivor needs a proof');
  // A device the aggregator starved of every bundle holds no share, yet still keeps t pair seeds secret.
  const starved = new sa.SecAggClient({ federation: v.federation, deviceId: d, identity: c.ed25519FromSeed(fromHex(s.identity_seed)),
    aggregatorKey: agg.publicKey, directory });
  starved.advertise(v.round, keys);
  starved.onCompactRoster(roster, neighbourKeysOf(v, t, d));
  starved.mask(new Uint32Array(roster.length), notices[0]);
  assert.deepEqual(starved.onSurvivors(notices[1]).self_mask_shares, {});
  const live = notices[1].devices.filter((x) => x !== d);
  assert.throws(() => starved.onSeedRequest(signed([v.dropped, ...live])), /below the threshold/, 'never all its pair seeds');
  const reveal = client.onSeedRequest(signed([v.dropped]));
  const dropped = neighbourEntries(neighbourKeysOf(v, t, d)).find((m) => m.device === v.dropped);
  assert.deepEqual(Object.keys(reveal.seeds), [v.dropped]);
  assert.equal(toHex(reveal.seeds[v.dropped]), toHex(sa.pairSeed(keys.maskSk, dropped.mask_pk, v.federation, v.round, d, v.dropped)));
  assert.ok(c.verify(directory[d], sa.signedBytes(reveal), reveal.signature));
  assert.equal(decode(encode(reveal)).device, d);
});

test('recorded round: a tampered roster or notice is refused', () => {
  const v = load('round');
  const t = new Topics(v.federation);
  const directory = Object.fromEntries(Object.entries(v.directory).map(([d, k]) => [d, fromHex(k)]));
  const aggKey = c.ed25519FromSeed(fromHex(v.aggregator_identity_seed)).publicKey;
  const roster = decode(fromHex(v.messages.find((m) => m.topic === t.roster).payload));
  const d = v.devices[0];
  const s = v.secrets[d];
  const fresh = () => {
    const client = new sa.SecAggClient({ federation: v.federation, deviceId: d, identity: c.ed25519FromSeed(fromHex(s.identity_seed)), aggregatorKey: aggKey, directory });
    client.advertise(v.round, sa.roundKeys({ encSk: fromHex(s.enc_sk), maskSk: fromHex(s.mask_sk), selfMask: fromHex(s.self_mask) }));
    return client;
  };
  const slice = neighbourKeysOf(v, t, d);
  const entries = neighbourEntries(slice);
  const pack = (members) => packNeighbourKeys(slice.federation, slice.round, slice.device, members);
  const swapped = pack([entries[0], { ...entries[1], enc_pk: entries[2].enc_pk }, ...entries.slice(2)]);
  assert.throws(() => fresh().onCompactRoster(roster, swapped), /swapped or forged/);
  assert.deepEqual(pack(entries), slice, 'packing the entries again gives the recorded message');
  assert.throws(() => fresh().onCompactRoster({ ...roster, threshold: 2 }, slice), /bad signature on roster/);
  assert.throws(() => fresh().onCompactRoster(roster, pack(entries.slice(1))), /not this device's neighbours/);
  const aggSecret = c.ed25519FromSeed(fromHex(v.aggregator_identity_seed)).secretKey;
  const resign = (r) => ({ ...r, signature: c.sign(aggSecret, sa.signedBytes(r)) });
  assert.throws(() => fresh().onCompactRoster(resign({ ...roster, graph_seed: new Uint8Array(32) }), slice), /graph seed does not match/);
  const digests = roster.digests.slice();
  digests[16 * roster.devices.indexOf(slice.members[0])] ^= 1;
  assert.throws(() => fresh().onCompactRoster(resign({ ...roster, digests }), slice), /graph seed does not match/);
  // the full roster is still accepted, with the same graph (the same seed) and so the same bundles' recipients
  const full = fullRosterOf(v, t, roster, fromHex(v.aggregator_identity_seed));
  assert.deepEqual(Object.keys(fresh().onRoster(full)).sort(), [...slice.members].sort());
  const client = fresh();
  client.onCompactRoster(roster, slice);
  const u2 = decode(fromHex(v.messages.filter((m) => m.topic === t.notice)[0].payload));
  assert.throws(() => client.mask(new Uint32Array(roster.length), { ...u2, round: v.round + 1 }), SecAggError);
  assert.throws(() => client.mask(new Uint32Array(roster.length), { ...u2, signature: new Uint8Array(64) }), SecAggError);
});

test('recorded round: every inbox bundle is opened on its own; bad ones are returned, not thrown', () => {
  const v = load('round');
  const t = new Topics(v.federation);
  const directory = Object.fromEntries(Object.entries(v.directory).map(([d, k]) => [d, fromHex(k)]));
  const aggKey = c.ed25519FromSeed(fromHex(v.aggregator_identity_seed)).publicKey;
  const roster = decode(fromHex(v.messages.find((m) => m.topic === t.roster).payload));
  const d = v.devices[v.devices.length - 1];
  const s = v.secrets[d];
  const client = new sa.SecAggClient({ federation: v.federation, deviceId: d, identity: c.ed25519FromSeed(fromHex(s.identity_seed)), aggregatorKey: aggKey, directory });
  client.advertise(v.round, sa.roundKeys({ encSk: fromHex(s.enc_sk), maskSk: fromHex(s.mask_sk), selfMask: fromHex(s.self_mask) }));
  client.onCompactRoster(roster, neighbourKeysOf(v, t, d));
  const inbox = decode(fromHex(v.messages.filter((m) => m.topic === t.inbox(d))[1].payload));
  const senders = Object.keys(inbox.ciphertexts).sort();
  assert.ok(senders.length >= 2 && Object.keys(inbox.digests).length === senders.length, 'the recorded inbox carries digests');
  const first = senders[0];
  const garbled = { ...inbox, ciphertexts: { ...inbox.ciphertexts, [first]: new Uint8Array(82) } };
  const refused = client.onInbox(garbled);
  assert.deepEqual(Object.keys(refused), [first]);
  assert.deepEqual(Object.keys(client.state.received).sort(), senders.slice(1), 'the bundles after the bad one were opened');
  const wrongDigest = { ...inbox, ciphertexts: { [first]: inbox.ciphertexts[first] }, digests: { [first]: new Uint8Array(32) } };
  assert.match(client.onInbox(wrongDigest)[first], /digests/);
});

test('a roster carrying a low-order key is refused before any key agreement', () => {
  for (const weak of [new Uint8Array(32), Uint8Array.from({ length: 32 }, (_, i) => (i === 0 ? 1 : 0))]) {
    assert.throws(() => sa.checkPublicKey(weak, 'mask key'), /low-order/);
  }
  sa.checkPublicKey(c.x25519Base(c.randomBytes(32)), 'a real key');
});
