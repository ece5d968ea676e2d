// End-to-end delivery of a device's contributions, as the Python device's (edge_client/delivery.py).
//
// A PUBACK only says the broker took a message; a broker that crashes before the aggregator read it loses it.
// So a contribution stays in the ledger until the aggregator moves past its phase: the roster settles the keys,
// the U2 notice the share batch, the U3 notice the masked input, the next round's announcement the reveal. A
// roster or notice that lists the device confirms it; one that does not means the phase closed without it.
//
// The cue to re-send is the phase's opening message arriving again (the broker re-delivers the retained
// announcement, roster and notice when the device re-subscribes after a reconnect; the aggregator re-publishes
// them after its own reconnects): the device re-sends what that phase still lacks, unless a send of it is under
// way (then once more when that send ends: it may have gone to a broker that died). The aggregator deduplicates
// by device, round and phase, so a re-send is always safe.
//
// The pair-seed step is a contribution of its own: the seed reveal answering the aggregator's signed seed request
// travels on the unmask topic (the aggregator tells it from the unmask reveal by message type), but the ledger
// keeps it as kind SEEDS, beside the unmask reveal rather than in its place. The request is its cue (it settles
// nothing: it lists no devices); the next round's announcement confirms both.
//
// Chunked uploads resume from what the aggregator confirms it holds (a `receipt` on the device's inbox,
// aggregator/receipts.py): a (re-)send skips those chunks, and a receipt that shows chunks lost after the
// manifest arrived asks for a re-send of just those (at most MAX_RECEIPT_RESENDS times per contribution).

import { ProtocolError } from './errors.js';
import { receiptHolds } from './wire.js';

/** Each secure phase's contribution, in protocol order: an aggregator message opening phase i confirms i - 1. */
export const SECURE_ORDER = ['keys', 'shares', 'masked', 'unmask'];
export const MAX_RECEIPT_RESENDS = 4;
/** The ledger kind of a seed reveal: not a topic kind (it rides the unmask topic), outside SECURE_ORDER. */
export const SEEDS = 'seeds';

/** The ledger kind of a message sent on topic kind `kind`: SEEDS for a seed reveal, else `kind`. */
export const ledgerKind = (kind, msg) => (msg?.t === 'secagg.seed_reveal' ? SEEDS : kind);

const keyOf = (roundId, kind) => `${roundId}/${kind}`;
const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

export class Deliveries {
  constructor(deviceId, log = () => {}) {
    this.deviceId = deviceId;
    this.log = log;
    this.entries = new Map();
    this.receipts = new Map();
    this.stats = { sent: 0, resent: 0, bytesResent: 0, bytesSkipped: 0, failed: 0, expired: 0, confirmed: 0, byKind: {} };
  }

  /** [round, kind] of every contribution not yet confirmed, oldest round first. */
  outstanding() {
    return [...this.entries.values()].map((e) => [e.roundId, e.kind]).sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : 1));
  }

  /**
   * Keep the contribution, then send it; resolves true once the broker took it. A failed send is logged and
   * kept for the next cue, never thrown: the message exists and will get there.
   * @param {(published: (bytes: number) => void) => Promise<void>} transmit sends it, reporting each publication
   */
  deliver(roundId, kind, size, transmit) {
    const entry = { roundId, kind, size, transmit, sending: false, attempts: 0, cued: false, byReceipt: 0 };
    this.entries.set(keyOf(roundId, kind), entry);
    this.stats.sent += 1;
    return this.send(entry);
  }

  /**
   * The aggregator (re)published the message opening phase `kind` of `roundId`: earlier phases are settled
   * (confirmed when `members` lists this device, or is null); returns the entry for `kind` to re-send, if any.
   */
  opened(roundId, kind, members = null) {
    const index = SECURE_ORDER.indexOf(kind);
    for (const earlier of SECURE_ORDER.slice(0, Math.max(index, 0))) {
      this.settle(roundId, earlier, members === null || members.includes(this.deviceId));
    }
    const entry = this.entries.get(keyOf(roundId, kind));
    if (!entry) return null;
    if (entry.sending) { entry.cued = true; return null; }
    return entry;
  }

  /** Rounds up to `roundId` are over (a newer round was announced). */
  roundEnded(roundId) {
    for (const entry of [...this.entries.values()]) if (entry.roundId <= roundId) this.settle(entry.roundId, entry.kind, true);
    for (const [key, receipt] of this.receipts) if (receipt.round_id <= roundId) this.receipts.delete(key);
  }

  /** Send `entry` again if it is still outstanding and not being sent. */
  async resend(entry) {
    if (this.entries.get(keyOf(entry.roundId, entry.kind)) !== entry || entry.sending) return false;
    this.stats.resent += 1;
    this.stats.byKind[entry.kind] = (this.stats.byKind[entry.kind] ?? 0) + 1;
    this.log(`device=${this.deviceId} re-sends its ${entry.kind} of round ${entry.roundId} (attempt ${entry.attempts + 1})`);
    return this.send(entry);
  }

  async send(entry) {
    entry.sending = true;
    entry.attempts += 1;
    const again = entry.attempts > 1;
    let ok = false;
    try {
      await entry.transmit((bytes) => { if (again) this.stats.bytesResent += bytes; });
      ok = true;
    } catch (e) {
      this.stats.failed += 1;
      this.log(`device=${this.deviceId} round=${entry.roundId} ${entry.kind} not sent (${e.message ?? e}); kept for a re-send`);
    } finally {
      entry.sending = false;
    }
    if (entry.cued) {
      entry.cued = false;
      return this.resend(entry);
    }
    return ok;
  }

  /** The aggregator's receipt for a chunked upload of ours: kept; returns the entry to re-send when chunks were lost. */
  onReceipt(receipt) {
    if (receipt.sender !== this.deviceId) throw new ProtocolError(`receipt for ${receipt.sender}`);
    const key = keyOf(receipt.round_id, receipt.kind);
    this.receipts.set(key, receipt);
    const entry = this.entries.get(key);
    const lost = receipt.manifest && !receipt.complete;
    if (!lost || !entry || entry.byReceipt >= MAX_RECEIPT_RESENDS) return null;
    if (entry.sending) { entry.cued = true; return null; }
    entry.byReceipt += 1;
    return entry;
  }

  /** For frame `chunk` (null: the manifest) of transfer `transferId`: 'complete' (stop), true (skip), false (send). */
  held(roundId, kind, transferId, chunk) {
    const receipt = this.receipts.get(keyOf(roundId, kind));
    if (!receipt || !transferId || !sameBytes(receipt.transfer_id, transferId)) return false;
    if (receipt.complete) return 'complete';
    return chunk !== null && receiptHolds(receipt, chunk);
  }

  settle(roundId, kind, confirmed) {
    if (!this.entries.delete(keyOf(roundId, kind))) return;
    if (confirmed) this.stats.confirmed += 1;
    else {
      this.stats.expired += 1;
      this.log(`device=${this.deviceId} round=${roundId}: the aggregator closed the ${kind} phase without this device`);
    }
  }
}
