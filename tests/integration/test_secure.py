"""Secure aggregation over a real Mosquitto with the ACL config (usernames = device ids)."""

from __future__ import annotations

import asyncio
import secrets

import aiomqtt
import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from aggregator.engine import Aggregator
from aggregator.secure import PhaseWindows
from edge_client.client import EdgeClient
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder
from shared.mqtt import MqttConfig, MqttConnection
from shared.snapshots import make_snapshot
from shared.topics import KEYS, Topics
from simulator.broker import MosquittoBroker
from tests.support import (
    directory_of,
    enrol,
    initial_weights,
    mqtt_config,
    run_rounds,
    secure_devices,
)

pytestmark = pytest.mark.broker
FED = "sec"


@pytest.fixture
def accounts():
    ids = [f"dev-{i:02d}" for i in range(20)] + ["aggregator", "spy"]
    return {user: secrets.token_hex(8) for user in ids}


@pytest.fixture
def acl_broker(tmp_path, accounts):
    broker = MosquittoBroker.with_accounts(accounts, tmp_path / "broker", federation=FED).start()
    yield broker
    broker.stop()


def creds(broker, accounts, user, **kw):
    return mqtt_config(broker, user, username=user, password=accounts[user], **kw)


async def test_twenty_devices_thirty_percent_killed_after_shares_exact_sum(
    acl_broker, tmp_path, accounts, digits
):
    keys = enrol(20)
    directory = directory_of(keys)
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=creds(acl_broker, accounts, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        codec=CodecConfig(bits=16, clip_norm=5.0, expected_clients=1, seed=bytes(32)),
        windows=PhaseWindows(keys=10, shares=10, masked=4, unmask=10),
        min_clients=10,
        target_clients=20,
    )
    victims = set(list(keys)[:6])  # 30%
    crashes: list[asyncio.Task] = []

    def crash_after_shares(device: EdgeClient):
        def hook(phase: str) -> None:
            if phase == "shares":
                crashes.append(asyncio.create_task(device.crash()))

        return hook

    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        mqtt = lambda cid: creds(acl_broker, accounts, cid)  # noqa: E731
        devices = secure_devices(acl_broker, digits, keys, agg.verify_key, FED, mqtt=mqtt)
        for device in devices:
            if device.client_id in victims:
                device.phase_hook = crash_after_shares(device)
        results = await run_rounds(agg, devices, 1)
        await asyncio.gather(*crashes, return_exceptions=True)
        secure = agg.last_secure
    assert results[0].status == "closed", results[0].reason
    assert results[0].contributors == 14 and results[0].version == 1
    survivors = [d for d in devices if d.client_id not in victims]
    assert secure is not None and secure.server is not None
    assert secure.server.masked == frozenset(d.client_id for d in survivors)
    bits = secure.config.bits
    plain_sum = np.zeros_like(secure.total)
    for device in survivors:
        np.add(plain_sum, device.secure_round.encoded, out=plain_sum)
    plain_sum &= np.uint32((1 << bits) - 1)
    np.testing.assert_array_equal(secure.total, plain_sum)  # bit-exact
    assert np.linalg.norm(agg.weights - weights) > 0  # the round moved the model


async def test_acl_refuses_foreign_inbox_and_impersonation(acl_broker, accounts):
    topics = Topics(FED)
    async with MqttConnection(creds(acl_broker, accounts, "aggregator"), [topics.rounds_all]) as agg:
        await agg.wait_connected()
        client = aiomqtt.Client(
            "127.0.0.1", acl_broker.port, identifier="dev-01", username="dev-01",
            password=accounts["dev-01"], protocol=aiomqtt.ProtocolVersion.V5,
        )  # fmt: skip
        async with client:
            own = await client.subscribe(f"{topics.inbox('dev-01')}/#", qos=1)
            assert own[0].value < 0x80  # granted
            # Mosquitto 2.0 grants the SUBACK and enforces "read" at delivery: nothing may arrive.
            await client.subscribe(f"{topics.inbox('dev-02')}/#", qos=1)
            await client.publish(topics.round_msg(0, KEYS, "dev-02"), b"impersonated", qos=1)
            await client.publish(topics.round_msg(0, KEYS, "dev-01"), b"own", qos=1)
            await agg.publish(topics.inbox("dev-02"), b"sealed for dev-02")
            await agg.publish(topics.inbox("dev-01"), b"sealed for dev-01")
            # The allowed message is waited for with a loaded machine's deadline (Mosquitto forwards a
            # client's messages in order, so a refused one that got through would come first); then a
            # quiet second shows nothing else follows.
            first = await agg.next_message(timeout=30)
            assert first is not None, "the device's own keys message never reached the aggregator"
            received = [(str(first.topic), first.payload)]
            while (msg := await agg.next_message(timeout=1.0)) is not None:
                received.append((str(msg.topic), msg.payload))
            assert received == [(topics.round_msg(0, KEYS, "dev-01"), b"own")]
            # dev-01 gets its own inbox message, published after dev-02's, and never dev-02's.
            async with asyncio.timeout(30):
                delivered = await anext(aiter(client.messages))
            assert (str(delivered.topic), delivered.payload) == (topics.inbox("dev-01"), b"sealed for dev-01")
            with pytest.raises(asyncio.TimeoutError):
                async with asyncio.timeout(1.0):
                    async for _ in client.messages:
                        break  # dev-01 must not get dev-02's inbox message

    with pytest.raises(aiomqtt.MqttError):  # a wrong password is refused outright
        async with aiomqtt.Client(
            "127.0.0.1",
            acl_broker.port,
            username="dev-01",
            password="nope",
            protocol=aiomqtt.ProtocolVersion.V5,
        ):
            pass


@pytest.mark.parametrize(
    "broker, bits, subsample",
    [
        ("mosquitto", 16, 1.0),
        ("mosquitto", 8, 0.5),
        ("nats", 16, 1.0),
        ("nats", 8, 0.5),
        ("rabbitmq", 16, 1.0),
    ],
    indirect=["broker"],
)
async def test_compressed_secure_round_matches_the_plaintext_oracle(
    broker, tmp_path, digits, bits, subsample
):
    """Decode(unmasked sum) equals decode(plaintext sum of the same encodings) computed by an oracle."""
    keys = enrol(6)
    directory = directory_of(keys)
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        codec=CodecConfig(
            bits=bits, clip_norm=5.0, expected_clients=1, seed=bytes(32), subsample_rate=subsample
        ),
        windows=PhaseWindows(keys=10, shares=10, masked=20, unmask=10),
        min_clients=4,
        target_clients=6,
        snapshot_encoding="f32",
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        before = agg.weights.copy()
        devices = secure_devices(broker, digits, keys, agg.verify_key, FED, seed=1)
        results = await run_rounds(agg, devices, 1, timeout=60)
        secure = agg.last_secure
        applied = agg.weights - before  # FedAvg with server lr 1: the decoded mean delta
    assert results[0].status == "closed" and results[0].contributors == 6
    config = secure.config
    oracle_sum = np.zeros(UpdateEncoder(config, model.dim).encoded_length, dtype=np.uint32)
    for device in devices:
        np.add(oracle_sum, device.secure_round.encoded, out=oracle_sum)
    oracle_sum &= np.uint32((1 << config.bits) - 1)
    np.testing.assert_array_equal(secure.total, oracle_sum)
    oracle_mean, oracle_weight = UpdateDecoder(config, model.dim).decode(oracle_sum, 6)
    np.testing.assert_allclose(applied, oracle_mean, rtol=0, atol=2e-6)
    assert oracle_weight == pytest.approx(results[0].metrics["total_weight"])


def test_non_linear_codec_is_refused_under_secure_aggregation(tmp_path):
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="scheme"):
        AggregatorConfig(
            federation=FED,
            mqtt=MqttConfig(client_id="aggregator"),
            store_dir=tmp_path,
            directory={"dev-00": bytes(32)},
            codec=CodecConfig(bits=16, clip_norm=1.0, expected_clients=1, seed=bytes(32), scheme="topk"),
        )


async def test_dp_round_reports_epsilon_and_budget_stops_at_the_right_round(broker, tmp_path, digits):
    from shared.dp import DPConfig, PrivacyAccountant

    keys = enrol(5)
    directory = directory_of(keys)
    z, delta, margin = 1.0, 1e-3, 0.1
    # The engine checks the planned z before each round and records the *proven* multiplier present after
    # it. All 5 devices survive, i.e. exactly the planned minimum (ceil(0.9 * 5)), and 4 shares are
    # credited, sized so the proven Skellam multiplier is z (up to the variance grid, < 0.1%): replay that.
    # The equal-variance Gaussian figure would have been z / sqrt(1 - margin) = 1.054 z.
    present = z
    acct = PrivacyAccountant(delta)
    eps_after = []
    for _ in range(3):
        acct.record_round(present)
        eps_after.append(acct.epsilon())
    budget = (
        eps_after[1] + PrivacyAccountant.from_history(delta, None, [(present, None)] * 2).epsilon_if_next(z)
    ) / 2
    assert eps_after[1] < budget  # two rounds fit, a third would not
    dp = DPConfig(mode="distributed", noise_multiplier=z, delta=delta, clip_norm=5.0, dropout_margin=margin,
                  budget_epsilon=budget)  # fmt: skip
    model, weights = initial_weights()
    cfg = AggregatorConfig(
        federation=FED,
        mqtt=mqtt_config(broker, "aggregator"),
        store_dir=tmp_path / "agg",
        directory=directory,
        windows=PhaseWindows(keys=10, shares=10, masked=20, unmask=10),
        min_clients=4,
        target_clients=5,
        dp=dp,
    )
    async with Aggregator(cfg, initial=make_snapshot(FED, 0, -1, model.layout, weights)) as agg:
        devices = secure_devices(broker, digits, keys, agg.verify_key, FED, seed=2)
        results = await run_rounds(agg, devices, 5)
    assert [r.status for r in results] == ["closed", "closed"]  # the budget stopped the third round
    epsilons = [r.metrics["epsilon"] for r in results]
    assert epsilons == pytest.approx(eps_after[:2], rel=1e-3)
    assert epsilons[-1] <= budget
    # The recorded figure is the proven one (>= the target, within the grid), not the Gaussian equivalent.
    assert all(z <= r.metrics["noise_multiplier"] <= z * 1.001 for r in results)
