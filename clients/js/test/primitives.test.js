// The JS client against spec/vectors/: wire, topics, chunking, crypto, PRG, Shamir, graph, bundles, bitpack.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import * as bitpack from '../src/bitpack.js';
import * as chunking from '../src/chunking.js';
import * as c from '../src/crypto.js';
import { SecAggError, WireError } from '../src/errors.js';
import { pack } from '../src/msgpack.js';
import { neighboursOf } from '../src/roster.js';
import * as sa from '../src/secagg.js';
import { checkId, Topics } from '../src/topics.js';
import { decode, encode, SCHEMAS } from '../src/wire.js';
import { fromHex, load, toHex, untyped, wireTyped } from './helpers.js';

before(async () => { await c.ready(); });

test('wire: every message decodes to its fields and re-encodes to the same bytes', () => {
  const v = load('wire');
  assert.deepEqual(new Set(v.cases.map((x) => x.type)), new Set(Object.keys(SCHEMAS)));
  for (const kase of v.cases) {
    const raw = fromHex(kase.msgpack);
    const msg = decode(raw);
    assert.equal(msg.t, kase.type);
    assert.deepEqual({ ...msg, t: undefined }, { ...untyped(kase.fields), t: undefined }, kase.name);
    const fields = wireTyped(kase.fields);
    assert.equal(toHex(encode({ t: kase.type, ...fields })), kase.msgpack, kase.name);
  }
});

test('wire: malformed payloads raise WireError', () => {
  for (const kase of load('wire').rejects) {
    assert.throws(() => decode(fromHex(kase.msgpack)), WireError, kase.reason);
  }
});

test('topics and ids', () => {
  const v = load('topics');
  const t = new Topics(v.federation);
  const d = v.device; const r = v.round;
  const mine = {
    model: t.model, model_chunk_3: t.modelChunk(3), delta: t.delta, delta_chunk_0: t.deltaChunk(0), round: t.round,
    roster: t.roster, notice: t.notice, result: t.result, status: t.status(d), inbox: t.inbox(d),
    inbox_chunk_2: t.inboxChunk(d, 2), update: t.roundMsg(r, 'update', d), keys: t.roundMsg(r, 'keys', d),
    shares: t.roundMsg(r, 'shares', d), masked: t.roundMsg(r, 'masked', d), masked_chunk_1: t.roundChunk(r, 'masked', d, 1),
    unmask: t.roundMsg(r, 'unmask', d),
  };
  assert.deepEqual(mine, v.topics);
  assert.deepEqual(t.parseRound(v.topics.masked_chunk_1), { round: r, kind: 'masked', sender: d, chunk: 1 });
  assert.equal(Topics.chunkOf(t.inbox(d), v.topics.inbox_chunk_2), 2);
  for (const id of v.valid_ids) assert.equal(checkId(id), id);
  for (const id of v.invalid_ids) assert.throws(() => checkId(id), WireError);
  for (const topic of v.invalid_round_topics) assert.throws(() => t.parseRound(topic), WireError);
  for (const suffix of v.invalid_chunk_suffixes) assert.throws(() => Topics.chunkOf(t.inbox(d), `${t.inbox(d)}/c/${suffix}`), WireError);
  assert.equal(Topics.chunkOf(t.delta, `${t.delta}/c/${v.max_chunk_index}`), v.max_chunk_index);
  assert.equal(t.parseRound(t.roundMsg(v.max_round_id, 'keys', d)).round, v.max_round_id);
});

test('chunking: split gives the recorded frames, reassembly is order- and duplicate-proof', () => {
  const v = load('chunking');
  const payload = fromHex(v.payload);
  assert.equal(toHex(chunking.transferId(payload)), v.transfer_id);
  for (const kase of v.cases) {
    const frames = chunking.split(payload, kase.limit);
    assert.deepEqual(frames.map((f) => ({ chunk: f.chunk, payload: toHex(f.payload) })), kase.frames);
    if (frames.length === 1) continue; // sent as itself: nothing to reassemble
    const shuffled = [...frames, ...frames].reverse();
    const r = new chunking.Reassembler();
    const out = shuffled.map((f) => r.feed('k', f.chunk, f.payload)).filter(Boolean);
    assert.equal(out.length, 1);
    assert.equal(toHex(encode(out[0])), v.payload);
  }
});

test('crypto: ed25519, x25519, pair seeds, commitments', () => {
  const v = load('crypto');
  for (const e of v.ed25519) {
    const key = c.ed25519FromSeed(fromHex(e.seed));
    assert.equal(toHex(key.publicKey), e.public_key);
    assert.equal(toHex(c.sign(key.secretKey, fromHex(e.message))), e.signature);
    assert.ok(c.verify(key.publicKey, fromHex(e.message), fromHex(e.signature)));
  }
  for (const x of v.x25519) assert.equal(toHex(c.x25519Base(fromHex(x.secret_key))), x.public_key);
  const p = v.pair_seed;
  assert.equal(toHex(pack(['pair', p.federation, p.round, p.a, p.b])), p.context);
  assert.equal(toHex(sa.pairSeed(fromHex(p.a_mask_sk), fromHex(p.b_mask_pk), p.federation, p.round, p.a, p.b)), p.seed);
  assert.equal(toHex(sa.pairSeed(fromHex(p.b_mask_sk), fromHex(p.a_mask_pk), p.federation, p.round, p.b, p.a)), p.seed);
  assert.throws(() => sa.pairSeed(fromHex(p.a_mask_sk), fromHex(v.pair_seed_low_order_peer_key.peer_mask_pk), p.federation, p.round, p.a, p.b), SecAggError);
  for (const s of v.self_mask_commitment) assert.equal(toHex(sa.commitSelfMask(fromHex(s.seed))), s.commitment);
});

test('prg: chunk seeds, expansions, combined masks across a chunk boundary', () => {
  const v = load('prg');
  const seed = fromHex(v.seed);
  for (const s of v.chunk_seeds) assert.equal(toHex(sa.chunkSeed(seed, s.index)), s.chunk_seed);
  for (const e of v.expansions) assert.deepEqual([...sa.expandChunk(seed, e.chunk, e.coords, e.bits)], e.values);
  const m = v.combined;
  const plus = m.plus.map(fromHex); const minus = m.minus.map(fromHex);
  const full = sa.combinedMask(plus, minus, m.bits, 0, m.length);
  const bytes = new Uint8Array(full.buffer);
  assert.equal(toHex(c.sha256(bytes)), m.sha256_u32le);
  assert.deepEqual([...full.subarray(0, 8)], m.head);
  assert.deepEqual([...full.subarray(full.length - 8)], m.tail);
  assert.deepEqual([...sa.combinedMask(plus, minus, m.bits, m.window.start, m.window.stop)], m.window.values);
});

test('shamir: split with recorded coefficients, reconstruct, lagrange', () => {
  const v = load('shamir');
  assert.equal(sa.PRIME.toString(16), v.prime);
  for (const kase of v.cases) {
    const coefficients = kase.coefficients.map((h) => BigInt(`0x${h}`));
    const shares = sa.shamirSplit(fromHex(kase.secret), kase.threshold, kase.holders, () => coefficients.shift());
    assert.deepEqual(shares.map(toHex), kase.shares);
    const subset = Object.fromEntries(kase.reconstruct_from_x.map((x) => [x, shares[x - 1]]));
    assert.equal(toHex(sa.shamirReconstruct(subset, kase.threshold)), kase.secret);
  }
  assert.deepEqual(sa.lagrangeAtZero(v.lagrange_at_zero.xs).map((x) => x.toString(16)), v.lagrange_at_zero.coefficients);
});

test('graph: seeds, neighbour lists, share indices', () => {
  for (const kase of load('graph').cases) {
    const rows = kase.members.map(([d, g]) => [d, fromHex(g)]);
    kase.adverts.forEach((a, i) => {
      const body = new Uint8Array([...fromHex(a.signed_bytes), ...fromHex(a.signature)]);
      assert.equal(toHex(c.blake2b(body, { size: 16, person: 'fedmq.sa.advd1' })), a.digest);
      assert.equal(a.digest, toHex(rows[i][1]));
    });
    const seed = sa.graphSeed(kase.federation, kase.round, [...rows].reverse());
    assert.equal(toHex(seed), kase.graph_seed);
    const graph = sa.neighbourGraph(rows.map((r) => r[0]), kase.degree, seed);
    assert.deepEqual(graph, kase.neighbours);
    for (const [u, vs] of Object.entries(graph)) assert.deepEqual(neighboursOf(rows.map((r) => r[0]), kase.degree, seed, u), vs);
    for (const [u, holders] of Object.entries(kase.share_index)) {
      for (const [h, x] of Object.entries(holders)) assert.equal(graph[u].indexOf(h) + 1, x);
    }
  }
});

test('bundles: seal gives the recorded ciphertext; a wrong binding does not open', () => {
  const v = load('bundles');
  assert.equal(toHex(sa.bundleNonce(v.federation, v.round, v.sender, v.recipient)), v.nonce);
  const sealed = sa.sealBundle(fromHex(v.sender_enc_sk), fromHex(v.recipient_enc_pk), v.federation, v.round, v.sender,
    v.recipient, fromHex(v.self_mask_share), fromHex(v.mask_key_share));
  assert.equal(toHex(sealed), v.ciphertext);
  const opened = sa.openBundle(fromHex(v.recipient_enc_sk), fromHex(v.sender_enc_pk), sealed, v.federation, v.round, v.sender, v.recipient);
  assert.equal(toHex(opened.selfMaskShare), v.self_mask_share);
  assert.equal(toHex(opened.maskKeyShare), v.mask_key_share);
  assert.throws(() => sa.openBundle(fromHex(v.recipient_enc_sk), fromHex(v.sender_enc_pk), sealed, v.federation,
    v.wrong_binding_round, v.sender, v.recipient), SecAggError);
});

test('bitpack: pack and unpack at every width; padding refused', () => {
  const v = load('bitpack');
  for (const kase of v.cases) {
    assert.equal(toHex(bitpack.pack(Uint32Array.from(kase.values), kase.bits)), kase.packed, `bits ${kase.bits}`);
    assert.deepEqual([...bitpack.unpack(fromHex(kase.packed), kase.bits, kase.values.length)], kase.values);
  }
  for (const r of v.rejects) assert.throws(() => bitpack.unpack(fromHex(r.packed), r.bits, r.count));
  for (const p of v.packed_size) assert.equal(bitpack.packedSize(p.count, p.bits), p.bytes);
});
