// The JS device's delivery ledger (src/delivery.js), as tests/edge_client/test_delivery.py and
// test_upload_resume.py check the Python one: kept until confirmed, re-sent on cue, resumed from receipts.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { split, transferId } from '../src/chunking.js';
import * as c from '../src/crypto.js';
import { Deliveries, ledgerKind, MAX_RECEIPT_RESENDS, SEEDS } from '../src/delivery.js';
import { Device } from '../src/device.js';
import { FedmqError, ProtocolError } from '../src/errors.js';
import { decode, encode } from '../src/wire.js';

before(async () => { await c.ready(); });

function link() {
  const l = { sent: [], fail: false, gate: null };
  l.transmit = (label, size = 100) => async (published) => {
    if (l.gate) await l.gate;
    if (l.fail) throw new FedmqError('link down');
    l.sent.push(label);
    published(size);
  };
  return l;
}

test('a failed send is kept and goes out on the next cue', async () => {
  const box = new Deliveries('dev-1');
  const l = link();
  l.fail = true;
  assert.equal(await box.deliver(3, 'masked', 100, l.transmit('masked')), false);
  assert.deepEqual(box.outstanding(), [[3, 'masked']]);
  l.fail = false;
  const entry = box.opened(3, 'masked'); // the U2 notice arrives again
  assert.ok(entry && await box.resend(entry));
  assert.deepEqual(l.sent, ['masked']);
  assert.equal(box.stats.resent, 1);
  assert.equal(box.stats.bytesResent, 100);
  assert.deepEqual(box.outstanding(), [[3, 'masked']]); // unconfirmed until U3
});

test('the next phase confirms a listed device and expires an unlisted one; a new round ends the old', async () => {
  const box = new Deliveries('dev-1');
  const l = link();
  await box.deliver(1, 'keys', 10, l.transmit('keys'));
  assert.equal(box.opened(1, 'shares', ['dev-1', 'dev-2']), null);
  assert.equal(box.stats.confirmed, 1);
  await box.deliver(1, 'shares', 10, l.transmit('shares'));
  box.opened(1, 'masked', ['dev-2']);
  assert.equal(box.stats.expired, 1);
  await box.deliver(1, 'unmask', 10, l.transmit('reveal'));
  box.roundEnded(1);
  assert.deepEqual(box.outstanding(), []);
});

test('a cue during a send (maybe stranded) sends once more when it ends', async () => {
  const box = new Deliveries('dev-1');
  const l = link();
  let open;
  l.gate = new Promise((resolve) => { open = resolve; });
  const first = box.deliver(5, 'masked', 10, l.transmit('masked'));
  assert.equal(box.opened(5, 'masked'), null); // under way: queued, not doubled
  l.gate = null;
  open();
  assert.ok(await first);
  assert.deepEqual(l.sent, ['masked', 'masked']);
});

test('receipts: held chunks are skipped, a gap after the manifest asks for a bounded re-send', async () => {
  const box = new Deliveries('dev-1');
  const payload = encode({ t: 'chunk', transfer_id: new Uint8Array(16), index: 0, data: new Uint8Array(12000).fill(7) });
  const frames = split(payload, 1024);
  const id = transferId(payload);
  const bitmap = new Uint8Array([0b11111111]); // chunks 0-7
  const receipt = decode(encode({ t: 'receipt', round_id: 2, kind: 'masked', sender: 'dev-1', transfer_id: id, held: bitmap, manifest: true, complete: false }));
  const sends = [];
  await box.deliver(2, 'masked', payload.length, async (published) => {
    for (const f of [...frames.slice(1), frames[0]]) {
      const held = box.held(2, 'masked', id, f.chunk);
      if (held === 'complete') break;
      if (held) continue;
      sends.push(f.chunk);
      published(f.payload.length);
    }
  });
  assert.equal(sends.length, frames.length);
  let runs = 0;
  for (let entry = box.onReceipt(receipt); entry; entry = box.onReceipt(receipt)) { await box.resend(entry); runs += 1; }
  assert.equal(runs, MAX_RECEIPT_RESENDS);
  const count = frames.length - 1;
  assert.ok(count > 8);
  const firstResend = sends.slice(frames.length, frames.length + count - 8 + 1);
  assert.deepEqual(firstResend, [...Array.from({ length: count - 8 }, (_, i) => 8 + i), null]); // the gap, then the manifest
  assert.ok(box.stats.bytesResent < MAX_RECEIPT_RESENDS * payload.length);
  const done = { ...receipt, complete: true, held: new Uint8Array(0) };
  assert.equal(box.onReceipt(done), null);
  assert.equal(box.held(2, 'masked', id, 0), 'complete');
  assert.throws(() => box.onReceipt({ ...receipt, sender: 'dev-2' }), ProtocolError);
});

test('a seed reveal is kept as a kind of its own; its request settles nothing', async () => {
  assert.equal(ledgerKind('unmask', { t: 'secagg.seed_reveal' }), SEEDS);
  assert.equal(ledgerKind('unmask', { t: 'secagg.unmask_reveal' }), 'unmask');
  const box = new Deliveries('dev-1');
  const l = link();
  await box.deliver(4, 'unmask', 10, l.transmit('reveal'));
  await box.deliver(4, SEEDS, 10, l.transmit('seeds'));
  assert.deepEqual(box.outstanding(), [[4, SEEDS], [4, 'unmask']]); // beside, not in place of, the unmask reveal
  const entry = box.opened(4, SEEDS); // the seed request again: the seed reveal to re-send, nothing settled
  assert.ok(entry && await box.resend(entry));
  assert.deepEqual(l.sent, ['reveal', 'seeds', 'seeds']);
  assert.deepEqual(box.stats.byKind, { [SEEDS]: 1 });
  assert.equal(box.stats.confirmed, 0);
  box.roundEnded(4); // the next round's announcement confirms both
  assert.deepEqual(box.outstanding(), []);
  assert.equal(box.stats.confirmed, 2);
});

test('the device answers a seed request once, on the unmask topic, and re-sends it from its ledger when repeated', async () => {
  const device = new Device({ url: 'mqtt://127.0.0.1:1', federation: 'f', deviceId: 'dev-1', identity: c.ed25519FromSeed(new Uint8Array(32)),
    aggregatorKey: new Uint8Array(32), directory: {}, trainer: null });
  const published = [];
  let fail = false;
  device.client = { publishAsync: async (topic, payload) => { if (fail) throw new FedmqError('link down'); published.push([topic, payload]); } };
  device.times.remaining = () => 30;
  device.round = { id: 4, announce: {}, roster: {}, revealed: true, leftOut: false, seedsAnswered: false, bytesIn: 0, bytesOut: 0 };
  const seedReveal = { t: 'secagg.seed_reveal', federation: 'f', round: 4, device: 'dev-1', seeds: { 'dev-3': new Uint8Array(32).fill(2) }, signature: new Uint8Array(64) };
  let answers = 0;
  device.secagg.onSeedRequest = () => { answers += 1; return seedReveal; };
  await device.sendRound('unmask', { t: 'secagg.unmask_reveal', federation: 'f', round: 4, device: 'dev-1', self_mask_shares: {}, mask_key_shares: {}, signature: new Uint8Array(64) });
  const request = encode({ t: 'secagg.seed_request', federation: 'f', round: 4, dealers: ['dev-3'], proofs: [], signature: new Uint8Array(64) });
  fail = true; // the first answer's publish fails: kept in the ledger, not lost
  device.handle(device.topics.notice, request);
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(answers, 1);
  assert.equal(device.deliveries.stats.failed, 1);
  assert.deepEqual(device.deliveries.outstanding(), [[4, SEEDS], [4, 'unmask']]);
  fail = false;
  device.handle(device.topics.notice, request); // the request again (a reconnect, the aggregator re-publishing)
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(answers, 1); // answered once: the re-send is the ledger's
  const topic = device.topics.roundMsg(4, 'unmask', 'dev-1');
  assert.deepEqual(published.map(([t]) => t), [topic, topic]); // the unmask reveal, then the seed reveal on the same topic
  assert.deepEqual([...decode(new Uint8Array(published[1][1])).seeds['dev-3']], [...seedReveal.seeds['dev-3']]);
  assert.equal(device.deliveries.stats.resent, 1);
  assert.deepEqual(device.deliveries.stats.byKind, { [SEEDS]: 1 });
  assert.deepEqual(device.deliveries.outstanding(), [[4, SEEDS], [4, 'unmask']]);
});

test('in U2, the device masks only once its share batch has come (the retained notice may come first after a broker restart)', async () => {
  const device = new Device({ url: 'mqtt://127.0.0.1:1', federation: 'f', deviceId: 'dev-1', identity: c.ed25519FromSeed(new Uint8Array(32)),
    aggregatorKey: new Uint8Array(32), directory: {}, trainer: null });
  device.times.until = () => 30; // the masked phase is open for 30 s more
  device.secagg.onInbox = () => ({});
  // A roster whose length no encoding matches: past the wait, sendMasked stops with a ProtocolError (our signal).
  const r = { id: 4, announce: { opened_at: 0, plan: { windows: { keys: 0, shares: 0, masked: 0 }, codec: { bits: 16, clip_norm: 5, seed: new Uint8Array(32) } } },
    roster: { devices: ['dev-1', 'dev-2'], length: -1, bits: 16 }, result: { delta: new Float32Array(10), numExamples: 5 },
    early: [], bytesIn: 0, bytesOut: 0 };
  device.round = r;
  let outcome = null;
  const masking = device.sendMasked(r, { t: 'secagg.survivor_list', round: 4, phase: 'shared', devices: ['dev-1', 'dev-2'] })
    .then(() => { outcome = 'sent'; }, (e) => { outcome = e; });
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(outcome, null); // trained, but still waiting for its share batch
  device.onInbox({ t: 'secagg.share_batch', round: 4, device: 'dev-1', ciphertexts: {} });
  await masking;
  assert.ok(outcome instanceof ProtocolError, String(outcome)); // went on to mask once the batch came

  // Not in U2: no batch will come, so no wait.
  const r2 = { ...r, inboxSeen: false };
  device.round = r2;
  await assert.rejects(device.sendMasked(r2, { t: 'secagg.survivor_list', round: 4, phase: 'shared', devices: ['dev-2'] }), ProtocolError);
});
