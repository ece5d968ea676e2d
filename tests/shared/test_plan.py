"""The typed round plan on the wire: strict decoding, bounds, version, and signatures that survive it."""

from __future__ import annotations

import msgpack
import nacl.signing
import pytest

from shared.codec import CodecConfig
from shared.dp import DPConfig
from shared.errors import ConfigError, WireError
from shared.plan import DEFAULT_WEIGHT_CAP, PLAN_VERSION, PhaseWindows, RoundPlan
from shared.signing import sign, verify
from shared.staleness import StalenessPolicy
from shared.wire import PHASE_KEYS, RoundAnnounce, decode, encode

CODEC = CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(range(32)))


def secure_plan(**overrides: object) -> RoundPlan:
    fields: dict[str, object] = {
        "mode": "secure",
        "windows": PhaseWindows(keys=2, shares=3, masked=4, unmask=5),  # ints: must still sign the same
        "codec": CODEC,
        "staleness": StalenessPolicy("age-variance", 3, 2),
        "blocks": ("0", "2"),
        "weight_cap": 64,
    }
    return RoundPlan(**{**fields, **overrides})  # type: ignore[arg-type]


def announce(plan: RoundPlan) -> RoundAnnounce:
    return RoundAnnounce(federation="fed", round_id=3, base_version=2, phase=PHASE_KEYS, opened_at=100.0,
                         deadline=120.0, min_clients=2, target_clients=4, plan=plan)  # fmt: skip


def test_a_signed_announcement_round_trips_and_still_verifies():
    key = nacl.signing.SigningKey(bytes(32))
    dp = DPConfig(mode="distributed", noise_multiplier=1.5, delta=1e-5, clip_norm=5.0, sampling_q=0.3)
    signed = sign(announce(secure_plan(dp=dp)), key)
    back = decode(encode(signed), RoundAnnounce)
    assert back == signed and back.plan.blocks == ("0", "2") and back.plan.windows.masked == 4.0
    verify(back, key.verify_key)
    assert back.plan.sampling_q == 0.3 and back.plan.codec_for(7).expected_clients == 7


def test_defaults_live_in_the_plan():
    plain = RoundPlan()
    assert (plain.mode, plain.weight_cap, plain.version) == ("plain", DEFAULT_WEIGHT_CAP, PLAN_VERSION)
    assert decode(encode(announce(plain)), RoundAnnounce).plan == plain
    assert plain.masked_window == float("inf") and plain.example_weight(2 * DEFAULT_WEIGHT_CAP) == 1.0
    assert secure_plan().example_weight(16) == 0.25


def _tampered(**changes: object) -> bytes:
    body = msgpack.unpackb(encode(announce(secure_plan())), raw=False)
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split(".")
        for name in parents:
            target = target[name]
        if value is KeyError:
            del target[leaf]
        else:
            target[leaf] = value
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"plan.version": PLAN_VERSION + 1}, "version"),
        ({"plan.colour": "blue"}, "unknown field"),
        ({"config": {"mode": "secure"}}, "unknown field"),  # the untyped map of earlier builds
        ({"plan.weight_cap": "1000"}, "expected int"),
        ({"plan.weight_cap": 0}, "weight_cap"),
        ({"plan.windows.masked": -1.0}, "windows.masked"),
        ({"plan.windows.keys": 1e9}, "windows.keys"),
        ({"plan.blocks": ["0", "0"]}, "twice"),
        ({"plan.blocks": ["x" * 300]}, "characters"),
        ({"plan.blocks": []}, "blocks"),
        ({"plan.codec": KeyError}, "codec"),
        ({"plan.codec.bits": 40}, "bits"),
        ({"plan.codec.scheme": "float32"}, "scheme"),
        ({"plan.staleness.max_staleness": -1}, "max_staleness"),
        ({"plan.mode": "relaxed"}, "mode"),
        ({"plan.dp": {"mode": "off"}}, "dp"),
    ],
)
def test_malformed_plans_are_wire_errors_naming_the_field(changes, match):
    with pytest.raises(WireError, match=match):
        decode(_tampered(**changes), RoundAnnounce)


def test_inconsistent_plans_cannot_be_built():
    with pytest.raises(ConfigError, match="plain round"):
        RoundPlan(mode="plain", codec=CODEC)
    with pytest.raises(ConfigError, match="clip_norm"):
        secure_plan(dp=DPConfig(mode="central", noise_multiplier=1.0, delta=1e-5, clip_norm=1.0))
    with pytest.raises(ConfigError, match="resolved"):
        unresolved = DPConfig(mode="central", target_epsilon=3.0, target_rounds=5, delta=1e-5, clip_norm=5.0)
        secure_plan(dp=unresolved)
    with pytest.raises(ConfigError, match="plain round has no codec"):
        RoundPlan().codec_for(3)
