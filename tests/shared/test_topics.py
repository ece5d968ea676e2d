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
