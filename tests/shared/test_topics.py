from __future__ import annotations

import pytest

from shared.errors import ConfigError, WireError
from shared.topics import UPDATE, Topics


def test_round_topic_round_trip():
    t = Topics("fed1")
    topic = t.round_msg(7, UPDATE, "dev-01")
    assert topic == "fl/fed1/r/7/update/dev-01"
    parsed = t.parse_round(topic)
    assert (parsed.round_id, parsed.kind, parsed.sender, parsed.chunk) == (7, UPDATE, "dev-01", None)
    assert t.parse_round(t.round_chunk(7, UPDATE, "dev-01", 3)).chunk == 3


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 65, "dev 1", "dev.1"])
def test_ids_cannot_smuggle_wildcards(bad):
    with pytest.raises(ConfigError):
        Topics("f").round_msg(1, UPDATE, bad)


@pytest.mark.parametrize(
    "topic",
    ["fl/other/r/1/update/d", "fl/f/r/x/update/d", "fl/f/r/1/bogus/d", "fl/f/r/1/update/d/c/x", "fl/f/model"],
)
def test_parse_rejects_foreign_topics(topic):
    with pytest.raises(WireError):
        Topics("f").parse_round(topic)


def test_model_chunk_topics():
    t = Topics("f")
    assert t.parse_model_chunk(t.model) is None
    assert t.parse_model_chunk(t.model_chunk(4)) == 4
    with pytest.raises(WireError):
        t.parse_model_chunk("fl/f/model/c/x")


# -- numbers and ids in topics: ASCII only, canonical, bounded (a Unicode digit once stopped intake) --

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shared.topics import MAX_CHUNK_INDEX, MAX_ROUND_ID, check_id, parse_number  # noqa: E402


@pytest.mark.parametrize("text", ["²", "٣", "１", "0x1", "-1", "+1", " 1", "1 ", "01", "", "1e3", "1\n"])
def test_numbers_in_topics_are_canonical_ascii(text):
    with pytest.raises(WireError):
        parse_number(text, 100, "round id")


def test_numbers_in_topics_are_bounded():
    assert parse_number("0", 5, "x") == 0 and parse_number("5", 5, "x") == 5
    with pytest.raises(WireError):
        parse_number("6", 5, "x")
    with pytest.raises(WireError):
        parse_number("9" * 400, 10**500, "x")  # never handed to int() at that length


@pytest.mark.parametrize(
    "topic",
    ["fl/f/r/²/update/d", "fl/f/r/1/update/d/c/²", "fl/f/r/01/update/d", f"fl/f/r/{MAX_ROUND_ID + 1}/keys/d",
     "fl/f/r/1/update/d\n", "fl/f/r/1/update/d/c/1/x"],
)  # fmt: skip
def test_parse_round_rejects_unicode_digits_and_out_of_range(topic):
    with pytest.raises(WireError):
        Topics("f").parse_round(topic)


def test_every_chunk_parser_rejects_unicode_digits():
    t = Topics("f")
    for parse, base in [
        (t.parse_delta_chunk, t.delta),
        (t.parse_model_chunk, t.model),
        (lambda topic: t.parse_inbox("d", topic), t.inbox("d")),
    ]:
        assert parse(base) is None and parse(f"{base}/c/{MAX_CHUNK_INDEX}") == MAX_CHUNK_INDEX
        for suffix in ["/c/²", "/c/01", f"/c/{MAX_CHUNK_INDEX + 1}", "/c/", "/x/1", "/c/1/2"]:
            with pytest.raises(WireError):
                parse(base + suffix)


def test_presence_topics_parse_to_their_device():
    t = Topics("f")
    assert t.parse_status(t.status("dev-1")) == "dev-1"
    for topic in ["fl/f/status/x y", "fl/f/status/", "fl/g/status/d", "fl/f/status/a/b", "fl/f/status/d\n"]:
        with pytest.raises(WireError):
            t.parse_status(topic)


def test_ids_reject_a_trailing_newline():
    with pytest.raises(ConfigError):
        check_id("dev-1\n", "client_id")


_TOPIC_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_SEGMENTS = st.lists(
    st.one_of(
        _TOPIC_TEXT, st.sampled_from(["fl", "f", "r", "c", "update", "keys", "1", "²", "model", "delta"])
    ),
    max_size=9,
)


@settings(max_examples=400, deadline=None)
@given(_SEGMENTS)
def test_parsers_raise_only_wire_errors_on_arbitrary_topics(segments):
    """Property: for any Unicode topic, every parser returns a well-formed value or raises WireError."""
    t = Topics("f")
    topic = "/".join(segments)
    for parse in [
        t.parse_round,
        t.parse_delta_chunk,
        t.parse_model_chunk,
        t.parse_status,
        lambda topic: t.parse_inbox("d", topic),
    ]:
        try:
            value = parse(topic)
        except WireError:
            continue
        if parse is t.parse_round:
            assert 0 <= value.round_id <= MAX_ROUND_ID and topic == (
                t.round_msg(value.round_id, value.kind, value.sender)
                if value.chunk is None
                else t.round_chunk(value.round_id, value.kind, value.sender, value.chunk)
            )
        elif parse is t.parse_status:
            assert topic == t.status(value)
        else:
            assert value is None or (0 <= value <= MAX_CHUNK_INDEX and topic.endswith(f"/c/{value}"))


def test_a_message_of_an_earlier_secure_phase_is_late_one_of_a_later_phase_breaks_the_protocol():
    from shared.errors import LateMessage, ProtocolError
    from shared.topics import KEYS, MASKED, SHARES, UNMASK, wrong_phase

    assert isinstance(wrong_phase(SHARES, MASKED), LateMessage)  # a re-send after a reconnect
    assert isinstance(wrong_phase(KEYS, UNMASK), LateMessage)
    for kind, phase in [(MASKED, SHARES), (UNMASK, KEYS), ("update", MASKED), (KEYS, "done")]:
        error = wrong_phase(kind, phase)
        assert type(error) is ProtocolError, (kind, phase)
    assert str(wrong_phase(SHARES, MASKED)) == "shares message in phase masked"
