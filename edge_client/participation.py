"""The device's participation rule for a secure round, as one pure function.

Given the round's plan, what the device holds (its snapshot version, a delta trained or in training) and
its own policy, :func:`decide` says what to do: join with the delta it has, train and join, train ahead
without joining, or skip the round, and whether to discard the delta it holds first. No I/O, no clock,
no randomness: the Poisson sampling draw is an input. ``edge_client/client.py`` acts on the decision;
the fleet benchmark (``benchmarks/fleet``) calls the same function for its simulated devices.

The rules, in order:

1. DP Poisson sampling: with ``plan.dp.sampling_q = q < 1``, the device sits the round out unless its
   draw is below ``q`` (the amplification the privacy accountant assumes).
2. A delta whose training failed is discarded.
3. A delta past the plan's maximum staleness, or a fresh delta (trained on this round's snapshot) of other
   blocks, is discarded.
4. A stale delta of other blocks is kept for a later round of its blocks (the rotation brings them back).
5. A delta still training on an older snapshot: skip; it contributes, stale, to a later round.
6. No delta: train on this round's snapshot if the device has it and its trainer is free; if its last
   training took longer than the masked window (plus ``startup_s``), train *ahead* without taking a
   roster slot it could not fill.
7. Otherwise join with the delta (staleness = round's base version - the delta's).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shared.plan import RoundPlan


class Action(enum.Enum):
    #: Do nothing this round.
    SKIP = "skip"
    #: DP sampling left the device out of this round.
    SIT_OUT = "sit-out"
    #: Join with the delta the device holds.
    JOIN = "join"
    #: Start training on this round's snapshot and join with the result.
    TRAIN_AND_JOIN = "train-and-join"
    #: Start training on this round's snapshot, but do not join: contribute it to a later round.
    TRAIN_AHEAD = "train-ahead"


@dataclass(frozen=True)
class HeldDelta:
    """A delta the device holds: trained (or training) from snapshot ``base`` on ``blocks``."""

    base: int
    blocks: tuple[str, ...] | None
    done: bool = True
    failed: bool = False


@dataclass(frozen=True)
class LocalState:
    """What the device has when the round is announced."""

    #: Version of the snapshot it holds (-1: none yet).
    version: int
    delta: HeldDelta | None = None
    #: A training (e.g. a discarded one) still occupies the trainer.
    training_busy: bool = False
    #: Seconds its last local training took (None: unknown).
    last_train_s: float | None = None


@dataclass(frozen=True)
class DevicePolicy:
    """The device's own settings (``EdgeConfig``) and this round's random draw."""

    train_ahead: bool = True
    #: Uniform draw in [0, 1) for DP Poisson sampling (ignored without sampling).
    sample_draw: float = 0.0
    #: Seconds before a training can start (e.g. fetching the snapshot); counted against the window.
    startup_s: float = 0.0


@dataclass(frozen=True)
class Decision:
    action: Action
    #: Drop the held delta before acting (it is stale past the maximum, failed, or of other blocks).
    discard: bool = False
    #: The staleness of the delta the device joins with (JOIN), else 0.
    staleness: int = 0
    reason: str = ""

    @property
    def joins(self) -> bool:
        return self.action in (Action.JOIN, Action.TRAIN_AND_JOIN)

    @property
    def trains(self) -> bool:
        return self.action in (Action.TRAIN_AND_JOIN, Action.TRAIN_AHEAD)


def decide(plan: RoundPlan, base_version: int, state: LocalState, policy: DevicePolicy) -> Decision:
    """What a device does with a secure round on snapshot ``base_version`` (rules in the module doc)."""
    q = plan.sampling_q
    if q is not None and q < 1.0 and policy.sample_draw >= q:
        return Decision(Action.SIT_OUT, reason=f"sampled out with q={q:g}")
    held = state.delta
    discard = False
    if held is not None and held.failed:
        held, discard = None, True
    if held is not None:
        tau = base_version - held.base
        fresh = tau == 0
        if not plan.staleness.accepts(tau) or (fresh and held.blocks != plan.blocks):
            held, discard = None, True
    if held is not None:
        if held.blocks != plan.blocks:
            return Decision(Action.SKIP, reason=f"keeps its delta of blocks {held.blocks} for a later round")
        if not held.done and held.base != base_version:
            return Decision(Action.SKIP, reason=f"still training on v{held.base}")
        return Decision(Action.JOIN, staleness=base_version - held.base, reason="joins with its delta")
    if state.version != base_version:
        return Decision(Action.SKIP, discard, reason=f"holds v{state.version}, not the round's snapshot")
    if state.training_busy:
        return Decision(Action.SKIP, discard, reason="still finishing a discarded training")
    window = plan.masked_window
    slow = state.last_train_s is not None and policy.startup_s + state.last_train_s > window
    if policy.train_ahead and slow:
        reason = f"its last training took {state.last_train_s:.1f} s, the masked window is {window:.1f} s"
        return Decision(Action.TRAIN_AHEAD, discard, reason=reason)
    return Decision(Action.TRAIN_AND_JOIN, discard, reason="trains on the round's snapshot")
