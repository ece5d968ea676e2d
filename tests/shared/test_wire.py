"""Wire format: round trips, strictness, and garbage that must raise exactly WireError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import WireError
from shared.wire import ChunkManifest, ModelUpdate, RoundAnnounce, decode, encode


def update(**kw) -> ModelUpdate:
    values = dict(
        round_id=3, sender="dev-1", base_version=2, num_examples=10, encoding="f32", dim=2, data=b"\0" * 8
    )
    values.update(kw)
    return ModelUpdate(**values)


def test_round_trip_and_bin_type():
    msg = update(metrics={"loss": 0.5})
    raw = encode(msg)
    assert decode(raw) == msg
    body = msgpack.unpackb(raw, raw=False)
    assert body["v"] == 1 and body["t"] == "update"
    assert isinstance(body["data"], bytes)  # bin, not a list of numbers


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda b: b.update(v=99), "schema version"),
        (lambda b: b.update(t="nope"), "unknown message type"),
        (lambda b: b.update(round_id="3"), "expected int"),
        (lambda b: b.update(round_id=True), "expected int"),
        (lambda b: b.update(data=[0, 1]), "expected bin"),
        (lambda b: b.update(extra=1), "unknown field"),
        (lambda b: b.pop("sender"), "missing field"),
        (lambda b: b.update(num_examples=0), "num_examples"),
    ],
)
def test_strict_decoding_names_the_problem(mutate, reason):
    body = msgpack.unpackb(encode(update()), raw=False)
    mutate(body)
    with pytest.raises(WireError, match=reason):
        decode(msgpack.packb(body, use_bin_type=True))


def test_expected_type_is_enforced():
    with pytest.raises(WireError, match="expected a round message"):
        decode(encode(update()), RoundAnnounce)


def test_size_bound():
    with pytest.raises(WireError, match="exceeds the limit"):
        decode(encode(update(data=b"\0" * 4000, dim=1000)), max_bytes=1000)


def test_manifest_invariants():
    with pytest.raises(ValueError):
        ChunkManifest(b"\0" * 16, total_size=100, chunk_size=10, chunk_count=3, sha256=b"\0" * 32)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_wire_error(blob):
    with contextlib.suppress(WireError):
        decode(blob)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "t", "round_id", "sender", "data", "dim", "x"]),
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=5),
            st.binary(max_size=5),
            st.none(),
            st.lists(st.integers(0, 255)),
        ),
    )
)
def test_random_maps_raise_only_wire_error(body):
    with contextlib.suppress(WireError):
        decode(msgpack.packb(body, use_bin_type=True))
