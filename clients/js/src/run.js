// Run one device from a plain config object until it has contributed to `rounds` rounds; used by the
// Node CLI (bin/device.js) and by the browser page (browser/), so both exercise the same code.
//
// config: { url, federation, device, identity_seed (hex), aggregator_key (hex), directory {id: hex},
//           data: { x: [[...]], y: [...] }, train: { epochs, lr, momentum, batch_size, seed },
//           rounds, timeout_s, chunk_limit, username, password,
//           faults: { disconnect_after: "shares", disconnect_during: "masked", offline_ms, clock_skew_s } }
// Faults are one-shot: `disconnect_after` drops the link once that message kind is acknowledged,
// `disconnect_during` after the first frame of that kind's (chunked) upload. `clock_skew_s` sets this
// process's wall clock (Date.now) that far off, as a phone with a wrong clock would be; the device's round
// deadlines must not depend on it (src/timing.js).

import * as c from './crypto.js';
import { Device } from './device.js';
import { MlpTrainer } from './trainer.js';

export async function createDevice(config, log = () => {}) {
  await c.ready();
  const skewS = config.faults?.clock_skew_s ?? 0;
  if (skewS) {
    const realNow = Date.now;
    Date.now = () => realNow() + skewS * 1000; // the whole device process runs on the wrong clock
    log(`device=${config.device} wall clock set ${skewS} s off`);
  }
  const trainer = new MlpTrainer({
    x: config.data.x.map((row) => Float32Array.from(row)), y: config.data.y,
    epochs: config.train?.epochs ?? 1, lr: config.train?.lr ?? 0.1, momentum: config.train?.momentum ?? 0.9,
    batchSize: config.train?.batch_size ?? 32, seed: config.train?.seed ?? 0,
  });
  const device = new Device({
    url: config.url, federation: config.federation, deviceId: config.device,
    identity: c.ed25519FromSeed(c.fromHex(config.identity_seed)), aggregatorKey: c.fromHex(config.aggregator_key),
    directory: Object.fromEntries(Object.entries(config.directory).map(([k, v]) => [k, c.fromHex(v)])),
    trainer, username: config.username, password: config.password, log, ...(config.chunk_limit ? { chunkLimit: config.chunk_limit } : {}),
  });
  device.faults = {
    disconnectAfter: config.faults?.disconnect_after ?? null, disconnectDuring: config.faults?.disconnect_during ?? null,
    offlineMs: config.faults?.offline_ms ?? 1500,
  };
  return device;
}

/** What the device did, per round: its encoded (pre-mask) vector, bytes in and out, seconds. */
export function report(device) {
  return {
    device: device.deviceId, version: device.version, reconnects: (device.connects ?? 1) - 1,
    bytes_in: device.bytesIn, bytes_out: device.bytesOut, rejected: device.rejected, deliveries: device.deliveries.stats,
    rounds: device.rounds.map((r) => ({ round: r.id, encoded: r.encoded, masked_sent: r.maskedSent, revealed: r.revealed,
      seconds: r.seconds ?? null, bytes_in: r.bytesIn, bytes_out: r.bytesOut, train_s: r.result?.seconds ?? null, loss: r.result?.loss ?? null })),
  };
}

/** Wait until `rounds` rounds are revealed and the model moved past them (throws on timeout). */
export async function runRounds(device, config) {
  const wanted = config.rounds ?? 1;
  await device.until(() => device.rounds.filter((r) => r.revealed && r.seconds !== undefined).length >= wanted,
    (config.timeout_s ?? 120) * 1000, `${wanted} rounds`);
  // Stay for the round's result and the next snapshot, so byte counts cover the whole round.
  await device.until(() => device.version > Math.max(...device.rounds.map((r) => r.announce.base_version)), 20000, 'the new snapshot')
    .catch(() => {});
}
