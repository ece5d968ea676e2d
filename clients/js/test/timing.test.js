// Round deadlines on the device's monotonic clock (src/timing.js), as shared/timing.py.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AggregatorTime, ANNOUNCE_GRACE_S, STEP_SLACK_S } from '../src/timing.js';

class HandClock {
  constructor(wall, mono = 1000) { this.wall = wall; this.mono = mono; }
  time() { return this.wall; }
  monotonic() { return this.mono; }
  advance(s) { this.wall += s; this.mono += s; }
}

const AGG = 1_800_000_000;
const announce = (id, openedAt, window = 60) => ({ round_id: id, opened_at: openedAt, deadline: openedAt + window });

test('a fresh announcement gives the whole window whatever the device wall clock says', () => {
  for (const skew of [-3600, 0, 3600]) {
    const clock = new HandClock(AGG + skew);
    const times = new AggregatorTime(clock);
    const a = announce(0, AGG);
    assert.equal(times.remaining(a), 60);
    clock.advance(45);
    assert.equal(times.remaining(a), 15);
    clock.wall += 7200; // the device's wall clock jumps mid-round: nothing moves
    assert.equal(times.remaining(a), 15);
  }
});

test('a retained announcement counts its age once a fresh stamp is known', () => {
  const clock = new HandClock(AGG + 3600);
  const times = new AggregatorTime(clock);
  times.remaining(announce(0, AGG));
  clock.advance(120);
  assert.equal(times.remaining(announce(1, AGG + 100)), 40);
  assert.equal(times.steps, 0);
});

test('an aggregator clock step forward or back is followed at its next announcement', () => {
  const clock = new HandClock(AGG);
  const times = new AggregatorTime(clock);
  const first = announce(0, AGG);
  assert.equal(times.remaining(first), 60);
  clock.advance(10);
  assert.equal(times.remaining(announce(1, AGG + 10 + 3600)), 60);
  assert.equal(times.remaining(first), 50); // a round under way keeps its deadline
  clock.advance(10);
  assert.equal(times.remaining(announce(2, AGG + 20 - 3600)), 60);
  assert.equal(times.steps, 1);
  const possible = announce(3, AGG + 20 - 3600 - 60 - ANNOUNCE_GRACE_S);
  assert.ok(times.remaining(possible) < 0);
  assert.equal(times.steps, 1);
  assert.ok(STEP_SLACK_S > 0);
});
