"""Quarantine policy (shared/quarantine.py): expiry in rounds and time, escalation on repeat offences,
permanence, operator lifts through the store, persistence across restarts."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.offences import Offences
from shared.quarantine import Quarantine, QuarantinePolicy, read_lift_requests, request_lift

RULE = "secagg-weak-key"


def _quarantine(**policy) -> Quarantine:
    q = Quarantine(policy=QuarantinePolicy(**policy))
    q.watch({RULE})
    return q


def test_expires_after_its_rounds_and_escalates_on_repeats():
    q = _quarantine(rounds=3, escalation=4.0)
    q.begin_round(10, 0.0)
    assert q.offence("dev", RULE)
    assert all(q.blocks("dev", r) for r in range(10, 14))  # the round it was named in, and 3 more
    assert not q.blocks("dev", 14)
    q.begin_round(20, 0.0)
    assert q.offence("dev", RULE)  # second offence: 12 rounds
    assert q.blocks("dev", 32) and not q.blocks("dev", 33)
    assert q.entries["dev"].offences == 2


def test_time_must_pass_as_well_as_rounds():
    q = _quarantine(rounds=1, seconds=100.0)
    q.begin_round(0, 1000.0)
    q.offence("dev", RULE)
    assert q.blocks("dev", 5, 1050.0)  # rounds are over, time is not
    assert not q.blocks("dev", 5, 1100.0)


def test_permanent_after_n_offences_and_only_watched_rules_quarantine():
    q = _quarantine(rounds=1, permanent_after=2)
    q.begin_round(0, 0.0)
    assert not q.offence("dev", "WireError")  # counted elsewhere, not a quarantining rule
    q.offence("dev", RULE)
    q.begin_round(5, 0.0)
    q.offence("dev", RULE)
    assert q.blocks("dev", 10**9, 1e12)


def test_one_round_several_rules_is_one_offence():
    q = _quarantine(rounds=2)
    q.watch({"other-rule"})
    q.begin_round(1, 0.0)
    assert q.offence("dev", RULE) and not q.offence("dev", "other-rule")
    assert q.entries["dev"].offences == 1


def test_operator_lift_through_the_store_keeps_the_count_and_survives_a_restart(tmp_path):
    q = _quarantine(rounds=50)
    q.begin_round(3, 0.0)
    q.offence("dev", RULE)
    q.offence("other", RULE)
    q.save(tmp_path)
    restarted = _quarantine(rounds=50)
    restarted.load(tmp_path)
    restarted.begin_round(4, 0.0)
    assert restarted.blocks("dev") and restarted.blocks("other")
    request_lift(tmp_path, "dev")
    assert restarted.apply_lift_requests(tmp_path) == ["dev"]
    assert read_lift_requests(tmp_path) == []  # consumed
    assert not restarted.blocks("dev") and restarted.blocks("other")
    restarted.begin_round(9, 0.0)
    restarted.offence("dev", RULE)  # offends again: escalates from its count (2nd: 200 rounds)
    assert restarted.entries["dev"].offences == 2 and restarted.blocks("dev", 209)


def test_offences_feed_the_quarantine():
    offences = Offences()
    offences.quarantine.watch({RULE})
    offences.quarantine.begin_round(1, 0.0)
    offences.record("dev", "WireError", "bad bytes")
    assert not offences.quarantine.blocks("dev")
    offences.record("dev", RULE, "zero key")
    assert offences.quarantine.blocked() == {"dev"}


def test_a_corrupt_state_file_starts_empty(tmp_path):
    (tmp_path / "quarantine.json").write_text("{not json")
    q = _quarantine()
    q.load(tmp_path)
    assert q.entries == {}


def test_policy_is_validated():
    with pytest.raises(ConfigError):
        QuarantinePolicy(escalation=0.5)
    with pytest.raises(ConfigError):
        QuarantinePolicy(rounds=-1)
