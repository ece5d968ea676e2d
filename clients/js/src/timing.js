// Round deadlines on the device's own monotonic clock, whatever its wall clock says (shared/timing.py).
//
// An announcement's opened_at and deadline are the aggregator's wall-clock stamps. The device never compares
// them with its own wall clock (it may be hours off, or jump mid-round): a stamp s received at local monotonic
// time m bounds (aggregator wall - local monotonic) from below by s - m; the largest bound seen is the
// estimate, and each round's stamps are mapped onto the monotonic clock once, when its announcement first
// arrives. A stamp far below the estimate (older than any retained announcement can be) means the aggregator's
// clock stepped back: the estimate restarts from it.

/** The process's clocks, in seconds: wall for stamps, monotonic for deadlines. Tests inject skewed ones. */
export const systemClock = {
  time: () => Date.now() / 1000,
  monotonic: () => performance.now() / 1000,
};

/** A wall clock `offsetS` away from the system's that `jump` moves; the monotonic clock is the system's. */
export class SkewedClock {
  constructor(offsetS = 0) { this.offsetS = offsetS; }
  jump(byS) { this.offsetS += byS; }
  time() { return Date.now() / 1000 + this.offsetS; }
  monotonic() { return performance.now() / 1000; }
}

/** Seconds a retained announcement outlives its deadline (shared/outbox.py ANNOUNCE_GRACE_S). */
export const ANNOUNCE_GRACE_S = 60;
/** Extra slack before a stamp below the estimate counts as a step of the aggregator's clock. */
export const STEP_SLACK_S = 30;

export class AggregatorTime {
  constructor(clock = systemClock) {
    this.clock = clock;
    this.offset = null; // aggregator wall - local monotonic
    this.steps = 0;
    this.rounds = new Map();
  }

  /** A message stamped `stamp`, at most `maxAgeS` old, has just arrived. */
  observe(stamp, maxAgeS) {
    const bound = stamp - this.clock.monotonic();
    if (this.offset === null || bound > this.offset) this.offset = bound;
    else if (bound < this.offset - maxAgeS - STEP_SLACK_S) { this.offset = bound; this.steps += 1; }
  }

  /** The round's shift (local monotonic = stamp + shift), fixed when its announcement is first seen. */
  shift(announce) {
    const key = `${announce.round_id}/${announce.opened_at}/${announce.deadline}`;
    let shift = this.rounds.get(key);
    if (shift === undefined) {
      this.observe(announce.opened_at, announce.deadline - announce.opened_at + ANNOUNCE_GRACE_S);
      shift = -this.offset;
      this.rounds.set(key, shift);
      if (this.rounds.size > 8) this.rounds.delete(this.rounds.keys().next().value);
    }
    return shift;
  }

  /** Seconds from now until the aggregator's stamp `stamp` of `announce`'s round (negative once past). */
  until(announce, stamp) { return stamp + this.shift(announce) - this.clock.monotonic(); }

  /** Seconds left in the round's window on this device's clock. */
  remaining(announce) { return this.until(announce, announce.deadline); }
}
