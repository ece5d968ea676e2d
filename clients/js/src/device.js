// A fedmq device over MQTT (Node or browser): snapshots and deltas in, secure rounds out.
//
// The transport is MQTT.js (TCP in Node, WebSockets everywhere): a persistent session (clean = false,
// session expiry), QoS 1 everywhere, a delayed last will, and automatic reconnection, so a device on a
// flaky link loses nothing: QoS 1 publications not yet acknowledged are resent after a reconnect
// (resumable uploads: a chunked masked input resumes from the first unacknowledged frame), and messages
// for the device that the broker queued while it was offline arrive when it returns. A broker crash can
// still lose what it acknowledged, so contributions go through a delivery ledger (src/delivery.js): kept
// until the aggregator confirms them, re-sent on cue, chunked ones resumed from the aggregator's receipts. Round-scoped
// messages carry a message expiry of the round's remaining time, so a stale one never reaches a later round.
// Bad input is logged and dropped, never thrown out of the message handler.

import { Buffer } from 'buffer';
import mqtt from 'mqtt';

import * as bitpack from './bitpack.js';
import { Reassembler, split, transferId } from './chunking.js';
import { codecConfig, UpdateEncoder } from './codec.js';
import { Deliveries, ledgerKind, SEEDS } from './delivery.js';
import { FedmqError, ProtocolError } from './errors.js';
import { SecAggClient } from './secagg.js';
import { applyDelta, snapshotWeights, verifyMapSigned } from './snapshot.js';
import { AggregatorTime, systemClock } from './timing.js';
import { Topics } from './topics.js';
import { decode, encode } from './wire.js';

const toBuffer = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
const toBytes = (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
/** Member ids of a full or a compact roster. */
const memberIds = (roster) => roster.devices ?? roster.members.map((m) => m.device);

export class Device {
  /**
   * @param {object} o
   * @param {string} o.url broker URL (`ws://host:port`, `mqtt://host:port`)
   * @param {string} o.federation federation id
   * @param {string} o.deviceId device id (MQTT client id and username)
   * @param {{publicKey: Uint8Array, secretKey: Uint8Array}} o.identity enrolled Ed25519 identity
   * @param {Uint8Array} o.aggregatorKey the aggregator's Ed25519 public key
   * @param {Object<string, Uint8Array>} o.directory enrolled device ids -> public keys
   * @param {{train(layout, weights): object}} o.trainer local training
   */
  constructor({ url, federation, deviceId, identity, aggregatorKey, directory, trainer, username, password,
    chunkLimit = 256 * 1024, reconnectMs = 300, willDelayS = 10, uniform = Math.random, log = () => {}, clock = systemClock }) {
    Object.assign(this, { url, federation, deviceId, identity, aggregatorKey, directory, trainer, username, password,
      chunkLimit, reconnectMs, willDelayS, uniform, log });
    this.topics = new Topics(federation);
    this.times = new AggregatorTime(clock); // round deadlines on the monotonic clock, never the wall clock
    this.deliveries = new Deliveries(deviceId, log); // contributions kept until the aggregator confirms them
    this.reassembler = new Reassembler();
    this.secagg = new SecAggClient({ federation, deviceId, identity, aggregatorKey, directory, log });
    this.version = -1;
    this.weights = null;
    this.layout = null;
    this.announce = null;
    this.round = null;
    this.contributed = new Set();
    this.rounds = [];
    this.rejected = [];
    this.bytesIn = 0;
    this.bytesOut = 0;
    this.faults = {};
    this.listeners = new Set();
    // Subscribed to the full snapshot; once up to date the (smaller) deltas are enough, as in Python.
    this.followingFull = true;
  }

  /** Connect and subscribe; resolves once the first connection is up. */
  start({ timeoutMs = 15000 } = {}) {
    const t = this.topics;
    const offline = encode({ t: 'presence', client_id: this.deviceId, online: false, at: Date.now() / 1000 });
    this.client = mqtt.connect(this.url, {
      clientId: this.deviceId, username: this.username, password: this.password, clean: false, protocolVersion: 5,
      properties: { sessionExpiryInterval: 24 * 3600 }, reconnectPeriod: this.reconnectMs, connectTimeout: 10000,
      will: { topic: t.status(this.deviceId), payload: toBuffer(offline), qos: 1, retain: true, properties: { willDelayInterval: this.willDelayS } },
    });
    this.client.on('message', (topic, payload) => this.handle(topic, toBytes(payload)));
    this.client.on('connect', (ack) => {
      this.connects = (this.connects ?? 0) + 1;
      this.client.options.reconnectPeriod = this.reconnectMs;
      this.log(`device=${this.deviceId} connected (session present: ${ack.sessionPresent})`);
      if (!ack.sessionPresent) {
        const topics = [t.deltaAll, t.roundAll, t.inboxAll(this.deviceId)];
        this.client.subscribe(this.followingFull ? [t.modelAll, ...topics] : topics, { qos: 1 });
      }
      const online = encode({ t: 'presence', client_id: this.deviceId, online: true, at: Date.now() / 1000 });
      this.client.publish(t.status(this.deviceId), toBuffer(online), { qos: 1, retain: true });
      this.emit('connect');
    });
    this.client.on('error', (e) => this.log(`device=${this.deviceId} mqtt error: ${e.message}`));
    return this.until(() => this.client.connected, timeoutMs, 'connect');
  }

  /** Close the connection; graceful publishes the offline presence first. */
  async stop() {
    if (!this.client) return;
    const offline = encode({ t: 'presence', client_id: this.deviceId, online: false, at: Date.now() / 1000 });
    if (this.client.connected) await this.client.publishAsync(this.topics.status(this.deviceId), toBuffer(offline), { qos: 1, retain: true }).catch(() => {});
    await this.client.endAsync();
  }

  /** Drop the link as a dead network would (no DISCONNECT) and come back after `offlineMs`. */
  dropConnection(offlineMs) {
    this.log(`device=${this.deviceId} forced disconnect for ${offlineMs} ms`);
    this.client.options.reconnectPeriod = offlineMs;
    this.client.stream.destroy();
  }

  on(listener) { this.listeners.add(listener); return () => this.listeners.delete(listener); }
  emit(event, data) { for (const l of this.listeners) l(event, data); }

  /** Resolve when `predicate()` holds (checked on every event and every 50 ms); reject after `timeoutMs`. */
  until(predicate, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      if (predicate()) { resolve(); return; }
      const timer = setInterval(() => { if (predicate()) { done(); resolve(); } }, 50);
      const deadline = setTimeout(() => { done(); reject(new FedmqError(`timed out after ${timeoutMs} ms waiting for ${what}`)); }, timeoutMs);
      const off = this.on(() => { if (predicate()) { done(); resolve(); } });
      function done() { clearInterval(timer); clearTimeout(deadline); off(); }
    });
  }

  async publishFramed(base, chunkTopic, payload, { expiryS, kind = null, roundId = null, published = () => {} } = {}) {
    const frames = split(payload, this.chunkLimit);
    const ordered = frames.length > 1 ? [...frames.slice(1), frames[0]] : frames; // chunks first
    const properties = expiryS ? { messageExpiryInterval: Math.max(1, Math.floor(expiryS)) } : undefined;
    const id = frames.length > 1 && roundId !== null ? transferId(payload) : null;
    for (const [i, f] of ordered.entries()) {
      const held = id ? this.deliveries.held(roundId, kind, id, f.chunk) : false; // the aggregator's receipt
      if (held === 'complete') break;
      if (held) { this.deliveries.stats.bytesSkipped += f.payload.length; continue; }
      if (i === 1 && kind && this.faults.disconnectDuring === kind) {
        // Fault injection: the link dies in the middle of this upload; the rest goes out after the reconnect.
        this.faults.disconnectDuring = null;
        this.dropConnection(this.faults.offlineMs ?? 1500);
      }
      const topic = f.chunk === null ? base : chunkTopic(f.chunk);
      this.bytesOut += f.payload.length;
      if (this.round) this.round.bytesOut += f.payload.length;
      // Resolves once acknowledged, possibly after reconnects: MQTT.js resends unacknowledged QoS 1.
      await this.client.publishAsync(topic, toBuffer(f.payload), { qos: 1, properties });
      published(f.payload.length);
    }
  }

  /**
   * Through the delivery ledger (src/delivery.js): kept until the aggregator confirms it, re-sent on cue. `kind`
   * is the topic's; the ledger's is the same except for a seed reveal (SEEDS: it must not replace the unmask reveal).
   */
  sendRound(kind, msg) {
    const r = this.round;
    const payload = encode(msg); // once: a re-send sends these same bytes
    return this.deliveries.deliver(r.id, ledgerKind(kind, msg), payload.length, (published) => this.publishFramed(
      this.topics.roundMsg(r.id, kind, this.deviceId), (i) => this.topics.roundChunk(r.id, kind, this.deviceId, i), payload,
      { expiryS: Math.max(1, this.times.remaining(r.announce)), kind, roundId: r.id, published }));
  }

  /** An aggregator message (re)opened phase `kind` of `roundId`: settle the earlier ones, re-send what it lacks. */
  cue(roundId, kind, members = null) {
    if (kind === 'keys') this.deliveries.roundEnded(roundId - 1);
    const entry = this.deliveries.opened(roundId, kind, members);
    if (entry) this.deliveries.resend(entry);
  }

  // -- incoming -------------------------------------------------------------------------------------------

  handle(topic, payload) {
    if (!payload.length) return; // a cleared retained message
    this.bytesIn += payload.length;
    if (this.round) this.round.bytesIn += payload.length;
    const t = this.topics;
    try {
      // Each phase-opening message is a delivery cue first (re-sends what an earlier send may have lost), then handled.
      if (topic === t.round) {
        const a = verifyMapSigned(payload, 'round', this.aggregatorKey);
        if (a.federation === this.federation) this.cue(a.round_id, 'keys');
        this.onAnnounce(a);
      } else if (topic === t.roster) {
        const roster = decode(payload, ['secagg.roster', 'secagg.compact_roster']);
        this.cue(roster.round, 'shares', memberIds(roster));
        this.onRoster(roster);
      } else if (topic === t.notice) {
        const notice = decode(payload, ['secagg.survivor_list', 'secagg.seed_request']);
        if (notice.t === 'secagg.survivor_list') this.cue(notice.round, notice.phase === 'shared' ? 'masked' : 'unmask', notice.devices);
        else this.cue(notice.round, SEEDS); // a repeated seed request re-sends the seed reveal (it lists no one)
        this.onNotice(notice);
      } else if (topic.startsWith(t.inbox(this.deviceId))) {
        const msg = this.reassembler.feed('inbox', Topics.chunkOf(t.inbox(this.deviceId), topic), payload);
        if (msg && msg.t === 'receipt') {
          const entry = this.deliveries.onReceipt(msg); // what the aggregator holds of an upload of ours
          if (entry) this.deliveries.resend(entry);
        } else if (msg) this.onInbox(msg);
      } else if (topic.startsWith(t.delta)) {
        const index = Topics.chunkOf(t.delta, topic);
        const frames = this.reassembler;
        const msg = index === null ? this.peekModel(payload) : null;
        if (msg === 'chunked' || index !== null) {
          const whole = frames.feed('delta', index, payload);
          if (whole) this.onModel(encode(whole), true);
        } else if (msg) this.onModel(payload, true);
      } else if (topic.startsWith(t.model)) {
        const index = Topics.chunkOf(t.model, topic);
        const msg = index === null ? this.peekModel(payload) : null;
        if (msg === 'chunked' || index !== null) {
          const whole = this.reassembler.feed('model', index, payload);
          if (whole) this.onModel(encode(whole), false);
        } else if (msg) this.onModel(payload, false);
      } else if (topic === t.result) {
        // informational
      }
    } catch (e) {
      if (!(e instanceof FedmqError)) this.log(`device=${this.deviceId} unexpected ${e.stack ?? e}`);
      this.rejected.push(String(e.message ?? e));
      this.log(`device=${this.deviceId} dropped message on ${topic}: ${e.message ?? e}`);
    }
    this.emit('message', topic);
  }

  peekModel(payload) {
    const msg = decode(payload);
    return msg.t === 'manifest' ? 'chunked' : msg;
  }

  onModel(payload, isDelta) {
    // Signature checks run on the bytes as received (encode(decode(x)) is x for canonical payloads).
    const msg = decode(payload, 'model');
    if (msg.federation !== this.federation) throw new ProtocolError(`snapshot for federation ${msg.federation}`);
    if (msg.version <= this.version) return;
    let result;
    if (msg.encoding === 'compact-delta') {
      if (!isDelta || msg.base_version !== this.version || !this.weights) {
        if (!this.followingFull) { // behind: fetch the full snapshot again
          this.followingFull = true;
          this.client.subscribe(this.topics.modelAll, { qos: 1 });
        }
        return;
      }
      result = applyDelta(payload, this.weights, this.aggregatorKey);
    } else result = snapshotWeights(payload, this.aggregatorKey);
    this.weights = result.weights;
    this.layout = msg.layout;
    this.version = msg.version;
    this.log(`device=${this.deviceId} has snapshot v${this.version}`);
    if (this.followingFull) {
      this.followingFull = false;
      this.client.unsubscribe(this.topics.modelAll);
    }
    this.maybeJoin();
  }

  onAnnounce(announce) {
    if (announce.federation !== this.federation) throw new ProtocolError(`round for federation ${announce.federation}`);
    if (this.announce && announce.round_id < this.announce.round_id) throw new ProtocolError(`replayed announcement of round ${announce.round_id}`);
    if (this.round && announce.round_id > this.round.id) this.round.closed = true;
    this.announce = announce;
    this.times.shift(announce); // anchored on arrival
    this.maybeJoin();
  }

  maybeJoin() {
    const a = this.announce;
    if (!a || a.plan.mode !== 'secure' || a.phase !== 'keys' || this.contributed.has(a.round_id)) return;
    if (this.times.remaining(a) <= 0 || !this.weights || a.base_version !== this.version) return;
    this.contributed.add(a.round_id);
    if (a.plan.dp && a.plan.dp.mode === 'distributed') { this.log('distributed DP rounds are not supported by this client; sitting out'); return; }
    if (a.plan.blocks) { this.log('partial-training rounds are not supported by this client; sitting out'); return; }
    const r = { id: a.round_id, announce: a, started: Date.now(), roster: null, early: [], maskedSent: false, revealed: false,
      closed: false, leftOut: false, seedsAnswered: false, result: null, encoded: null, bytesIn: 0, bytesOut: 0 };
    this.round = r;
    this.rounds.push(r);
    const advert = this.secagg.advertise(r.id);
    this.sendRound('keys', advert).catch((e) => this.log(`keys publish failed: ${e.message}`));
    // Train after the advert is out (training is synchronous; the keys window is for the advert only).
    setTimeout(() => {
      try {
        r.result = this.trainer.train(this.layout, this.weights);
        this.log(`device=${this.deviceId} trained round ${r.id} in ${r.result.seconds}s (loss ${r.result.loss.toFixed(3)})`);
      } catch (e) { this.log(`training failed: ${e.message}`); }
      this.emit('trained');
    }, 0);
  }

  /** The full roster, or a compact one and this device's neighbour keys (inbox), in either order. */
  onRoster(roster) {
    const r = this.round;
    if (!['secagg.roster', 'secagg.compact_roster', 'secagg.neighbour_keys'].includes(roster.t)) throw new ProtocolError(`${roster.t} is not a roster`);
    if (!r || roster.round !== r.id || r.roster || r.leftOut) return;
    if (roster.t !== 'secagg.neighbour_keys' && !memberIds(roster).includes(this.deviceId)) { r.leftOut = true; return; }
    let ciphertexts;
    if (roster.t === 'secagg.roster') ciphertexts = this.secagg.onRoster(roster);
    else {
      r.join = { ...r.join, [roster.t]: roster };
      const listed = r.join['secagg.compact_roster'];
      const slice = r.join['secagg.neighbour_keys'];
      if (!listed || !slice) return;
      ciphertexts = this.secagg.onCompactRoster(listed, slice);
      roster = listed;
    }
    r.roster = roster;
    const batch = { t: 'secagg.share_batch', federation: this.federation, round: r.id, device: this.deviceId, ciphertexts,
      digests: this.secagg.outgoingDigests(), signature: this.secagg.digestSignature() };
    this.sendRound('shares', batch)
      .then(() => { this.emit('shares'); if (this.faults.disconnectAfter === 'shares') { this.faults.disconnectAfter = null; this.dropConnection(this.faults.offlineMs ?? 1500); } })
      .catch((e) => this.log(`shares publish failed: ${e.message}`));
    for (const batchIn of r.early.splice(0)) this.openInbox(batchIn);
  }

  onInbox(batch) {
    const r = this.round;
    if (batch.t === 'secagg.neighbour_keys' && batch.device === this.deviceId) { this.onRoster(batch); return; }
    if (batch.t !== 'secagg.share_batch' || batch.device !== this.deviceId) throw new ProtocolError('inbox message is not a share batch for this device');
    if (!r || batch.round !== r.id) throw new ProtocolError(`share batch for round ${batch.round}`);
    r.inboxSeen = true;
    this.emit('inbox');
    if (!r.roster) r.early.push(batch);
    else this.openInbox(batch);
  }

  /** Open an inbox batch; each refused bundle is logged (one sender's bad bundle never stops the rest). */
  openInbox(batch) {
    // The aggregator re-publishes inbox batches after its reconnects: one already opened is skipped.
    const id = Object.entries(batch.ciphertexts).map(([k, v]) => `${k}:${Buffer.from(v).toString('base64')}`).sort().join('|');
    const r = this.round;
    r.opened ??= new Set();
    if (r.opened.has(id)) return;
    r.opened.add(id);
    for (const [sender, reason] of Object.entries(this.secagg.onInbox(batch))) {
      this.log(`round=${batch.round} share bundle from ${sender} refused: ${reason}`);
    }
  }

  onNotice(notice) {
    const r = this.round;
    if (!r || notice.round !== r.id || r.leftOut || !r.roster) return;
    if (notice.t === 'secagg.seed_request') { // pair seeds with a dealer nobody could rebuild (docs/protocol.md)
      // Answered once; a repeated request (a reconnect, the aggregator re-publishing) is the ledger's cue instead.
      if (r.revealed && !r.seedsAnswered) {
        const reveal = this.secagg.onSeedRequest(notice);
        r.seedsAnswered = true;
        this.sendRound('unmask', reveal)
          .then(() => this.log(`device=${this.deviceId} round ${r.id}: seed reveal acknowledged by the broker`))
          .catch((e) => this.log(`seed reveal publish failed: ${e.message}`));
      }
      return;
    }
    if (notice.phase === 'shared' && !r.maskedSent && !r.masking) {
      r.masking = true;
      this.sendMasked(r, notice).catch((e) => { r.masking = false; this.rejected.push(e.message); this.log(`masked input failed: ${e.message}`); });
    } else if (notice.phase === 'masked') {
      r.closed = true;
      if (r.maskedSent && !r.revealed) {
        const reveal = this.secagg.onSurvivors(notice);
        r.revealed = true;
        this.sendRound('unmask', reveal)
          .then(() => { r.seconds = (Date.now() - r.started) / 1000; this.emit('revealed'); })
          .catch((e) => this.log(`reveal publish failed: ${e.message}`));
      }
    }
  }

  async sendMasked(r, shared) {
    const a = r.announce;
    const w = a.plan.windows;
    const untilMasked = this.times.until(a, a.opened_at + w.keys + w.shares + w.masked);
    // In U2, the share batch must come before masking (after masking the share phase is over and its bundles
    // are refused). The aggregator sends it before the U2 notice, but after a broker restart that lost this
    // device's session the retained notice comes first and the batch only when the aggregator re-publishes it
    // (on this device's presence): masking at once would leave it unable to reveal its neighbours' shares,
    // and an honest neighbour would be blamed at unmask. So wait for it, at most until the masked phase ends.
    const needsBatch = shared.devices.includes(this.deviceId);
    await this.until(() => (r.result && (r.inboxSeen || !needsBatch)) || r.closed, Math.max(0, untilMasked * 1000),
      'training and the share batch').catch(() => {});
    if (!r.result || r.closed) { this.log(`device=${this.deviceId} round ${r.id}: not trained before the masked phase closed`); return; }
    const config = codecConfig(a.plan.codec, { expected_clients: memberIds(r.roster).length });
    const encoder = new UpdateEncoder(config, r.result.delta.length);
    if (encoder.encodedLength !== r.roster.length || config.bits !== r.roster.bits) {
      throw new ProtocolError(`roster expects ${r.roster.length} coordinates at ${r.roster.bits} bits, the codec gives ${encoder.encodedLength}`);
    }
    const cap = a.plan.weight_cap;
    const weight = Math.min(r.result.numExamples / cap, 1); // staleness 0: every staleness function gives 1
    const x = encoder.encode(r.result.delta, weight, this.uniform);
    r.encoded = Array.from(x);
    const y = this.secagg.mask(x, shared);
    const message = this.secagg.maskedInput(bitpack.pack(y, config.bits));
    r.maskedSent = true;
    await this.sendRound('masked', message);
    this.log(`device=${this.deviceId} round ${r.id}: masked input acknowledged by the broker`);
    this.emit('masked');
  }
}

