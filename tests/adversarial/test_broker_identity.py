"""Broker identity binding with the shipped ACL: an enrolled device account can neither take over the
aggregator's or another device's session, nor make the aggregator process a retained message."""

from __future__ import annotations

import asyncio
import secrets

import aiomqtt
import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.retained import RETAINED_DEVICE_MESSAGE
from shared.mqtt import MqttConnection
from shared.snapshots import make_snapshot
from shared.topics import UPDATE, Topics
from shared.wire import ModelUpdate, encode
from simulator.broker import MosquittoBroker
from tests.support import eventually, initial_weights, mqtt_config

pytestmark = pytest.mark.broker
FED = "hostile"
USERS = ["aggregator", "dev-00", "rogue"]


@pytest.fixture
def accounts() -> dict[str, str]:
    return {user: secrets.token_hex(8) for user in USERS}


def _broker(tmp_path, accounts, *, bind_identity: bool) -> MosquittoBroker:
    broker = MosquittoBroker.with_accounts(accounts, tmp_path / "broker", federation=FED)
    if not bind_identity:  # the control: the same broker as shipped before identity binding
        broker.auth = broker.auth.replace("\nuse_username_as_clientid true", "")
    return broker.start()


def _creds(broker, accounts, user, client_id=None):
    return mqtt_config(broker, client_id or user, username=user, password=accounts[user])


async def _impersonate(broker: MosquittoBroker, accounts, client_id: str, times: int) -> None:
    """The rogue logs in with its own account but asks for someone else's client id, clean start."""
    for _ in range(times):
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier=client_id,
            username="rogue",
            password=accounts["rogue"],
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,
        ):
            await asyncio.sleep(0.05)


async def _takeovers(broker, accounts) -> tuple[int, bool]:
    """(aggregator connects during the attack, whether dev-00's queued message survived it)."""
    topics = Topics(FED)
    inbox = f"fl/{FED}/inbox/dev-00"
    async with MqttConnection(_creds(broker, accounts, "aggregator"), [topics.rounds_all]) as agg:
        await agg.wait_connected(10)
        # dev-00 subscribes with a persistent session, then goes offline; a message is queued for it
        async with MqttConnection(_creds(broker, accounts, "dev-00"), [inbox]) as dev:
            await dev.wait_connected(10)
        await agg.publish(inbox, b"queued-for-dev-00")
        await _impersonate(broker, accounts, "aggregator", 5)
        await _impersonate(broker, accounts, "dev-00", 1)
        # dev-00 comes back: its queued message is still there, and the aggregator still hears it
        async with MqttConnection(_creds(broker, accounts, "dev-00"), [inbox]) as dev:
            await dev.wait_connected(10)
            queued = await dev.next_message(10)
            await dev.publish(topics.round_msg(0, UPDATE, "dev-00"), b"after-the-attack")
            got = await agg.next_message(10)
            assert got is not None and got.payload == b"after-the-attack"
        connects = agg.stats.connects
    return connects, queued is not None and queued.payload == b"queued-for-dev-00"


async def test_device_account_cannot_take_over_the_aggregator_or_another_device(tmp_path, accounts):
    broker = _broker(tmp_path, accounts, bind_identity=True)
    try:
        connects, survived = await _takeovers(broker, accounts)
    finally:
        broker.stop()
    assert connects == 1  # never disconnected by the rogue
    assert survived  # the message queued for dev-00 was not destroyed


async def test_control_without_identity_binding_the_takeover_happens(tmp_path, accounts):
    """Shows the test above can fail: without use_username_as_clientid the rogue kicks the aggregator."""
    broker = _broker(tmp_path, accounts, bind_identity=False)
    try:
        connects, survived = await _takeovers(broker, accounts)
    finally:
        broker.stop()
    assert connects > 1 or not survived


async def test_aggregator_never_processes_and_clears_a_retained_device_message(tmp_path, accounts):
    broker = _broker(tmp_path, accounts, bind_identity=True)
    topics = Topics(FED)
    model, weights = initial_weights()
    topic = topics.round_msg(0, UPDATE, "rogue")
    dim = model.layout.dim
    update = encode(ModelUpdate(0, "rogue", 0, 10, "f32", dim, np.ones(dim, "<f4").tobytes()))
    try:
        async with MqttConnection(_creds(broker, accounts, "rogue")) as rogue:
            await rogue.wait_connected(10)
            await rogue.publish(topic, update, retain=True)  # the ACL lets it write its own exact topic
        cfg = AggregatorConfig(
            federation=FED,
            mqtt=_creds(broker, accounts, "aggregator"),
            store_dir=tmp_path / "agg",
            mode="plain",
            enrolled=frozenset({"dev-00", "rogue"}),
            round_window_s=2.0,
            min_clients=1,
            target_clients=2,
        )
        async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
            results = await asyncio.wait_for(agg.run(1), timeout=30)
            await eventually(lambda: agg.retained.cleared == 1, 10, what="retained message cleared")
            assert agg.offences.by_sender()["rogue"] == {RETAINED_DEVICE_MESSAGE: 1}
        assert results[0].contributors == 0  # the retained update was never counted
        # A fresh subscriber gets no retained message: a marker published after subscribing comes first.
        async with MqttConnection(_creds(broker, accounts, "aggregator"), [topics.rounds_all]) as probe:
            await probe.wait_connected(10)
            async with MqttConnection(_creds(broker, accounts, "dev-00")) as dev:
                await dev.wait_connected(10)
                await dev.publish(topics.round_msg(1, UPDATE, "dev-00"), b"marker")
            first = await probe.next_message(10)
        assert first is not None and first.payload == b"marker"
    finally:
        broker.stop()
