"""The beyond-clip hunt (aggregator/hunt.py): refused sums name the rogue across rounds, never an honest
device, whatever the rogue does and whoever drops out; cohorts always reach the minimum."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.hunt import BEYOND_CLIP, Hunt, essential, hitting_set_exists, settle
from shared.offences import Offences


def _simulate(
    n: int,
    rogues: set[str],
    *,
    min_cohort: int,
    attack_p: float,
    miss_p: float,
    rounds: int,
    seed: int,
    tolerated: int = 1,
    share: float = 0.5,
) -> tuple[Hunt, list[tuple[int, str]], int]:
    """Rounds of the hunt's cohorts: a sum is refused when an attacking rogue is in it. Returns the hunt,
    (round, device) namings, and the number of refused rounds."""
    rng = random.Random(seed)
    fleet = [f"d{i:03d}" for i in range(n)]
    hunt = Hunt(tolerated=tolerated, rng=random.Random(seed), test_share=share)
    out: set[str] = set()  # named devices are quarantined for the rest of the run
    named: list[tuple[int, str]] = []
    refusals = 0
    for r in range(rounds):
        sat_out = hunt.plan(min_cohort)
        present = [d for d in fleet if d not in out and rng.random() >= miss_p]
        cohort = [d for d in present if d not in sat_out]
        if len(cohort) < min_cohort:
            continue  # abandoned for too few devices: the hunt hears nothing
        attacked = any(d in rogues and rng.random() < attack_p for d in cohort)
        if attacked:
            refusals += 1
            for device in hunt.refused(cohort, present):
                named.append((r, device))
                out.add(device)
        else:
            hunt.passed(cohort, present)
    return hunt, named, refusals


@pytest.mark.parametrize("n,min_cohort", [(9, 4), (40, 10), (200, 20)])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("share", [0.5, 0.25])
def test_a_persistent_rogue_is_named_within_log2_n_plus_two_refusals(n, min_cohort, seed, share):
    rogue = f"d{random.Random(seed).randrange(n):03d}"
    hunt, named, refusals = _simulate(n, {rogue}, min_cohort=min_cohort, attack_p=1.0, miss_p=0.0,
                                      rounds=200, seed=seed, share=share)  # fmt: skip
    assert [d for _, d in named] == [rogue]
    # every refusal at least halves the candidates (until the minimum cohort forces a larger test)
    assert refusals <= math.ceil(math.log2(n)) + 2
    assert not hunt.active


@given(
    n=st.integers(5, 60),
    rogue=st.integers(0, 59),
    attack_p=st.floats(0.05, 1.0),
    miss_p=st.floats(0.0, 0.3),
    min_share=st.floats(0.1, 0.5),
    seed=st.integers(0, 2**16),
    share=st.sampled_from([0.5, 0.25]),
)
@settings(max_examples=150, deadline=None)
def test_one_adaptive_rogue_never_gets_an_honest_device_named(n, rogue, attack_p, miss_p, min_share, seed,
                                                               share):  # fmt: skip
    culprit = f"d{rogue % n:03d}"
    _, named, _ = _simulate(n, {culprit}, min_cohort=max(2, int(n * min_share)), attack_p=attack_p,
                            miss_p=miss_p, rounds=120, seed=seed, share=share)  # fmt: skip
    assert all(device == culprit for _, device in named)


@given(n=st.integers(8, 40), a=st.integers(0, 39), b=st.integers(0, 39), seed=st.integers(0, 2**16),
       attack_p=st.floats(0.2, 1.0))  # fmt: skip
@settings(max_examples=100, deadline=None)
def test_two_colluders_with_two_tolerated_never_frame_an_honest_device(n, a, b, seed, attack_p):
    rogues = {f"d{a % n:03d}", f"d{b % n:03d}"}
    _, named, _ = _simulate(n, rogues, min_cohort=max(2, n // 4), attack_p=attack_p, miss_p=0.1,
                            rounds=150, seed=seed, tolerated=2)  # fmt: skip
    assert {device for _, device in named} <= rogues


def test_passed_rounds_never_name_anyone_an_adaptive_rogue_just_stops_attacking():
    hunt = Hunt(rng=random.Random(1), patience=1000)
    fleet = [f"d{i}" for i in range(10)]
    assert hunt.refused(fleet, fleet) == []
    for _ in range(50):  # the rogue behaves whenever it is tested: rounds pass, nobody is named
        sat_out = hunt.plan(3)
        cohort = [d for d in fleet if d not in sat_out]
        assert len(cohort) >= 3
        hunt.passed(cohort, fleet)
    assert hunt.active and hunt.named == {}
    assert "d3" in hunt.candidates()


def test_evidence_is_dropped_after_patience_passed_rounds_in_a_row():
    hunt = Hunt(patience=5)
    fleet = [f"d{i}" for i in range(8)]
    hunt.refused(fleet, fleet)
    for i in range(4):
        hunt.passed(fleet[:4], fleet)
        assert hunt.active, i
    hunt.refused(fleet[:6], fleet)  # a refusal restarts the count
    for _ in range(4):
        hunt.passed(fleet[:4], fleet)
    assert hunt.active
    hunt.passed(fleet[:4], fleet)
    assert not hunt.active and hunt.plan(2) == frozenset()


def test_two_culprits_framing_pattern_names_nobody_when_two_are_tolerated():
    # {a, h} and {b, h} refused: with one culprit assumed h is the only explanation; with two, a and b
    # explain it as well, so nobody is certainly guilty.
    sets = [frozenset({"a", "h"}), frozenset({"b", "h"})]
    assert essential(sets, 1) == ["h"]
    assert essential(sets, 2) == []
    # a in three refused sets whose other members are all different: without a, three culprits needed
    three = [frozenset({"a", "h"}), frozenset({"a", "x"}), frozenset({"a", "y"})]
    assert essential(three, 1) == essential(three, 2) == ["a"]
    assert essential(three, 3) == []
    assert not hitting_set_exists([frozenset({"a"}), frozenset({"b"})], 1)
    assert hitting_set_exists([frozenset({"a"}), frozenset({"b"})], 2)


def test_inconsistent_evidence_restarts_instead_of_naming():
    hunt = Hunt()
    assert hunt.refused(["a", "b", "c"]) == []
    assert hunt.refused(["d", "e", "f"]) == []  # disjoint: more than one culprit; start over from here
    assert hunt.evidence == [frozenset({"d", "e", "f"})]


def test_cohorts_keep_the_minimum_and_leave_out_only_candidates():
    hunt = Hunt(rng=random.Random(0))
    fleet = [f"d{i}" for i in range(9)]
    hunt.refused(fleet[:7], fleet)  # d7, d8 were not in the refused round: never left out
    sat_out = hunt.plan(4)
    assert sat_out and sat_out <= set(fleet[:7]) and hunt.testing <= set(fleet[:7])
    assert len([d for d in fleet if d not in sat_out]) >= 4
    assert hunt.plan(9) == frozenset()  # nobody can sit out: no restriction (the round runs whole)


def test_a_device_named_before_is_tested_alone_and_named_in_one_more_refusal():
    hunt = Hunt(rng=random.Random(0))
    fleet = [f"d{i}" for i in range(12)]
    hunt.named["d5"] = 1
    hunt.refused(fleet, fleet)
    sat_out = hunt.plan(4)
    assert "d5" in hunt.testing and len(hunt.testing) == 4  # the minimum cohort forces the padding
    cohort = [d for d in fleet if d not in sat_out]
    hunt.refused(cohort, fleet)
    sat_out = hunt.plan(4)
    assert hunt.testing == {"d5"}
    assert hunt.refused([d for d in fleet if d not in sat_out], fleet) == ["d5"]


def test_settle_counts_the_named_device_and_quarantines_it():
    offences = Offences()
    offences.quarantine.watch({BEYOND_CLIP})
    hunt = Hunt()
    first = settle(hunt, offences, round_id=1, contributors=["a", "b"], present=["a", "b"], refused="x")
    second = settle(hunt, offences, round_id=2, contributors=["a", "c"], present=["a", "c"], refused="y")
    assert first == [] and second == ["a"]
    assert offences.by_sender() == {"a": {BEYOND_CLIP: 1}}
    assert offences.quarantine.blocks("a") and not offences.quarantine.blocks("b")
    assert settle(hunt, offences, round_id=3, contributors=["b", "c"], present=["b"], refused=None) == []
    assert not hunt.active


def test_the_secure_round_turns_left_out_suspects_away_without_an_offence(tmp_path):
    """SecureRound applies the plan: suspects left out are turned away silently (even once the cohort
    is full), and the keys phase admits exactly the others."""
    import os

    from aggregator import rounds
    from aggregator.config import AggregatorConfig
    from aggregator.secure import PhaseWindows, SecureRound
    from shared.codec import CodecConfig
    from shared.mqtt import MqttConfig
    from shared.secagg import SecAggClient, generate_identity
    from shared.topics import KEYS, Topics
    from shared.wire import encode

    identities = {f"dev-{i}": generate_identity() for i in range(8)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    aggregator = generate_identity()
    config = AggregatorConfig(
        federation="fed", mqtt=MqttConfig(client_id="aggregator"), store_dir=tmp_path, directory=directory,
        codec=CodecConfig(bits=16, clip_norm=1.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=1, shares=1, masked=1, unmask=1), min_clients=3, target_clients=8,
    )  # fmt: skip
    hunt = Hunt(rng=random.Random(3))
    hunt.refused(list(directory), list(directory))  # everyone is a suspect after one refused round
    offences = Offences()
    plan = rounds.plan_secure_round(config, seed=os.urandom(32))
    secure = SecureRound(config, 1, aggregator, plan, 100, offences=offences, hunt=hunt)
    assert secure.sat_out and secure.admit == 8 - len(secure.sat_out) >= 3
    topics = Topics("fed")
    order = sorted(directory, key=lambda d: d not in secure.sat_out, reverse=True)  # the admitted first
    for device in order:
        client = SecAggClient("fed", device, identities[device], bytes(aggregator.verify_key), directory)
        secure.ingest(topics.parse_round(topics.round_msg(1, KEYS, device)), encode(client.advertise(1)))
    assert set(secure.adverts) == set(directory) - secure.sat_out
    assert secure.turned_away == set(secure.sat_out)
    assert offences.total == 0


def test_a_short_restricted_round_grows_the_next_tests_and_absent_devices_still_count():
    hunt = Hunt(rng=random.Random(2))
    fleet = [f"d{i}" for i in range(12)]
    hunt.refused(fleet[:10], fleet)  # d10, d11 absent from the refused round: not candidates
    hunt.plan(6)
    before = len(hunt.testing)
    hunt.short()
    hunt.plan(6)
    assert len(hunt.testing) == before + 1
    hunt.passed(fleet[:3], fleet[:3])  # a round where most devices missed: they stay present a while
    assert hunt.present == frozenset(fleet)
    hunt.passed(fleet[:3], fleet[:3])
    hunt.passed(fleet[:3], fleet[:3])
    assert hunt.present == frozenset(fleet[:3])
