"""Per-federation ACL on a real Mosquitto: a device of federation A writes nothing into federation B, with
the per-account rules `fedmq init`/`enroll` render (two federations on one shared broker) and with the
shipped `broker_config/acl.conf` (one federation, `demo`)."""

from __future__ import annotations

import secrets

import pytest

from fedmq_admin.acl import per_account, scoped, shipped
from shared.mqtt import MqttConnection
from shared.topics import KEYS, Topics
from simulator.broker import MosquittoBroker
from tests.support import mqtt_config

pytestmark = pytest.mark.broker


async def _reaches(broker, accounts, *, sender: str, topic: str, reader: str, watch: str,
                   marker: str) -> bool:  # fmt: skip
    """Whether ``sender``'s message on ``topic`` reaches ``reader`` (subscribed to ``watch``). The owner of
    the ``marker`` topic (its last level) publishes there afterwards: Mosquitto routes one message at a
    time, and ``sender``'s QoS 1 publish was acknowledged first, so a message that was routed arrives
    before the marker, and one that was dropped never arrives."""

    def creds(user: str):
        return mqtt_config(broker, user, username=user, password=accounts[user])

    async with MqttConnection(creds(reader), [watch]) as agg:
        await agg.wait_connected(10)
        async with MqttConnection(creds(sender)) as dev:
            await dev.wait_connected(10)
            await dev.publish(topic, b"intruder")
        async with MqttConnection(creds(marker.rsplit("/", 1)[-1])) as own:
            await own.wait_connected(10)
            await own.publish(marker, b"marker")
        got = []
        while not got or got[-1] != b"marker":
            msg = await agg.next_message(20)
            assert msg is not None, "the marker never arrived: the broker is not routing at all"
            got.append(msg.payload)
    return b"intruder" in got


async def test_a_device_of_federation_a_cannot_write_into_b_on_a_shared_broker(tmp_path):
    accounts = {u: secrets.token_hex(8) for u in ["agg-alpha", "agg-beta", "a-dev", "b-dev"]}
    rules = per_account("alpha", ["a-dev"], aggregator="agg-alpha") + per_account(
        "beta", ["b-dev"], aggregator="agg-beta"
    )
    assert "\npattern " not in rules  # patterns would apply to every account of every federation
    broker = MosquittoBroker.with_accounts(accounts, tmp_path, federation="alpha", acl=rules).start()
    alpha, beta = Topics("alpha"), Topics("beta")
    beta_marker = beta.round_msg(1, KEYS, "b-dev")
    try:
        # a-dev under its own id, but in beta's round, chunk and status topics: dropped
        for topic in (beta.round_msg(1, KEYS, "a-dev"), beta.round_chunk(1, KEYS, "a-dev", 0),
                      "fl/beta/status/a-dev"):  # fmt: skip
            assert not await _reaches(broker, accounts, sender="a-dev", topic=topic, reader="agg-beta",
                                      watch="fl/beta/#", marker=beta_marker)  # fmt: skip
        # the controls: the same device in its own federation, and beta's device in beta, do arrive
        own = alpha.round_msg(1, KEYS, "a-dev")
        assert await _reaches(broker, accounts, sender="a-dev", topic=own, reader="agg-alpha",
                              watch="fl/alpha/#", marker=alpha.round_msg(2, KEYS, "a-dev"))  # fmt: skip
        assert await _reaches(broker, accounts, sender="b-dev", topic=beta.round_msg(2, KEYS, "b-dev"),
                              reader="agg-beta", watch="fl/beta/#", marker=beta_marker)  # fmt: skip
    finally:
        broker.stop()


async def test_the_shipped_acl_confines_devices_to_the_demo_federation(tmp_path):
    accounts = {u: secrets.token_hex(8) for u in ["aggregator", "dev-0", "dev-1", "observer"]}
    # the shipped rules, plus a test-only account that may read everything (to see what gets through)
    rules = shipped() + "\nuser observer\ntopic read fl/#\n"
    broker = MosquittoBroker.with_accounts(accounts, tmp_path, federation="demo", acl=rules).start()
    marker = Topics("demo").round_msg(1, KEYS, "dev-1")
    try:
        for federation in ("other", "demo2"):
            topic = Topics(federation).round_msg(1, KEYS, "dev-0")
            assert not await _reaches(broker, accounts, sender="dev-0", topic=topic, reader="observer",
                                      watch="fl/#", marker=marker)  # fmt: skip
        own = Topics("demo").round_msg(1, KEYS, "dev-0")
        assert await _reaches(broker, accounts, sender="dev-0", topic=own, reader="aggregator",
                              watch="fl/demo/r/#", marker=marker)  # fmt: skip
    finally:
        broker.stop()


def test_renders_name_the_federation_and_every_rule_of_the_shipped_file():
    text = shipped()
    assert "fl/+/" not in text and "fl/#" not in text  # every rule names the federation
    rules = [line for line in text.splitlines() if line.startswith(("pattern ", "topic "))]
    rendered = per_account("fleet-7", ["dev-a", "dev-b"]).splitlines()
    for device in ("dev-a", "dev-b"):
        block = rendered[rendered.index(f"user {device}") + 1 :][: len(rules) - 1]
        assert all("fl/fleet-7/" in line and "%u" not in line for line in block)
        assert f"topic write fl/fleet-7/r/+/+/{device}" in block
    assert "topic readwrite fl/fleet-7/#" in rendered and "fl/demo/" not in "\n".join(rendered)
    assert "fl/sec/" in scoped("sec") and "fl/demo/" not in scoped("sec")
