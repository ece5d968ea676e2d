"""Property tests of the device's participation rule (edge_client/participation.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_client.participation import Action, DevicePolicy, HeldDelta, LocalState, decide
from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.plan import PhaseWindows, RoundPlan
from shared.staleness import StalenessPolicy

BLOCK_SETS = st.sampled_from([None, ("0",), ("1", "2"), ("0", "1", "2")])
CODEC = CodecConfig(bits=16, clip_norm=1.0, expected_clients=1, seed=bytes(32))


@st.composite
def plans(draw: st.DrawFn) -> RoundPlan:
    q = draw(st.one_of(st.none(), st.floats(0.05, 1.0)))
    dp = None if q is None else DPConfig(mode="distributed", noise_multiplier=1.0, delta=1e-5, clip_norm=1.0,
                                         sampling_q=q)  # fmt: skip
    return RoundPlan(
        mode="secure",
        windows=PhaseWindows(masked=draw(st.floats(0.5, 60.0))),
        staleness=StalenessPolicy("fedbuff", draw(st.integers(0, 5))),
        codec=CODEC,
        dp=dp,
        blocks=draw(BLOCK_SETS),
    )


@st.composite
def states(draw: st.DrawFn, base: int) -> LocalState:
    held = None
    if draw(st.booleans()):
        done = draw(st.booleans())
        held = HeldDelta(draw(st.integers(0, base + 1)), draw(BLOCK_SETS), done=done,
                         failed=done and draw(st.booleans()))  # fmt: skip
    return LocalState(
        version=draw(st.integers(-1, base + 1)),
        delta=held,
        training_busy=draw(st.booleans()),
        last_train_s=draw(st.one_of(st.none(), st.floats(0.0, 120.0))),
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[RoundPlan, int, LocalState, DevicePolicy]:
    base = draw(st.integers(0, 30))
    policy = DevicePolicy(draw(st.booleans()), draw(st.floats(0.0, 0.999)), draw(st.floats(0.0, 5.0)))
    return draw(plans()), base, draw(states(base)), policy


@settings(max_examples=400, deadline=None)
@given(cases())
def test_a_device_joins_only_with_a_delta_the_round_accepts(case):
    plan, base, state, policy = case
    decision = decide(plan, base, state, policy)
    assert decision == decide(plan, base, state, policy)  # pure: same inputs, same decision
    if decision.action is Action.JOIN:
        held = state.delta
        assert held is not None and not held.failed and not decision.discard
        assert held.blocks == plan.blocks  # never a delta of other blocks
        assert decision.staleness == base - held.base and plan.staleness.accepts(decision.staleness)
        assert held.done or held.base == base  # a delta still training joins only on the round's snapshot
    else:
        assert decision.staleness == 0


@settings(max_examples=400, deadline=None)
@given(cases())
def test_a_device_trains_only_on_the_rounds_snapshot_with_a_free_trainer_and_no_usable_delta(case):
    plan, base, state, policy = case
    decision = decide(plan, base, state, policy)
    if decision.trains:
        assert state.version == base and not state.training_busy
        assert state.delta is None or decision.discard
        slow = state.last_train_s is not None and policy.startup_s + state.last_train_s > plan.masked_window
        assert (decision.action is Action.TRAIN_AHEAD) == (policy.train_ahead and slow)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_stale_failed_and_fresh_mismatched_deltas_are_discarded_and_nothing_else(case):
    plan, base, state, policy = case
    decision = decide(plan, base, state, policy)
    if decision.action is Action.SIT_OUT:
        return
    held = state.delta
    expected = held is not None and (
        held.failed
        or not plan.staleness.accepts(base - held.base)
        or (held.base == base and held.blocks != plan.blocks)
    )
    assert decision.discard == expected


@settings(max_examples=200, deadline=None)
@given(cases())
def test_dp_sampling_sits_out_exactly_the_draws_at_or_above_q(case):
    plan, base, state, policy = case
    decision = decide(plan, base, state, policy)
    q = plan.sampling_q
    assert (decision.action is Action.SIT_OUT) == (q is not None and q < 1.0 and policy.sample_draw >= q)


def test_a_stale_delta_of_other_blocks_waits_for_its_blocks():
    plan = RoundPlan(mode="secure", windows=PhaseWindows(), codec=CODEC, blocks=("1", "2"),
                     staleness=StalenessPolicy("fedbuff", 3))  # fmt: skip
    state = LocalState(5, HeldDelta(4, ("0",)), False, 1.0)
    assert decide(plan, 5, state, DevicePolicy()).action is Action.SKIP
    later = RoundPlan(mode="secure", windows=PhaseWindows(), codec=CODEC, blocks=("0",),
                      staleness=StalenessPolicy("fedbuff", 3))  # fmt: skip
    joined = decide(later, 6, LocalState(6, HeldDelta(4, ("0",)), False, 1.0), DevicePolicy())
    assert joined.action is Action.JOIN and joined.staleness == 2
