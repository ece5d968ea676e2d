"""The signed enrolled set: verification, rollback and epoch refusal, and the grace rules that keep the
aggregator's set a subset of every device's while a change propagates."""

from __future__ import annotations

import asyncio

import nacl.signing
import pytest

from shared.enrolment import (
    EnrolmentError,
    EnrolmentFollower,
    FederationMismatch,
    LiveDirectory,
    make_list,
    verify_list,
)
from shared.errors import IncompatibleError
from shared.wire import encode

AUTH = nacl.signing.SigningKey(b"\x01" * 32)
EPOCH = b"\x02" * 16
KEYS = {f"dev-{i}": bytes(nacl.signing.SigningKey(bytes([i + 10]) * 32).verify_key) for i in range(4)}


def listing(serial: int, devices: list[str], revoked: list[str] = (), key=AUTH, epoch=EPOCH, fed="acme"):
    return encode(make_list(fed, epoch, serial, {d: KEYS[d] for d in devices}, list(revoked), key))


def test_a_list_verifies_only_with_the_authority_federation_and_epoch():
    payload = listing(1, ["dev-0", "dev-1"])
    msg = verify_list(payload, bytes(AUTH.verify_key), "acme", EPOCH)
    assert msg.directory() == {"dev-0": KEYS["dev-0"], "dev-1": KEYS["dev-1"]}
    other = nacl.signing.SigningKey(b"\x03" * 32)
    with pytest.raises(EnrolmentError, match="not signed"):
        verify_list(listing(1, ["dev-0"], key=other), bytes(AUTH.verify_key), "acme", EPOCH)
    with pytest.raises(EnrolmentError, match="federation"):
        verify_list(listing(1, ["dev-0"], fed="other"), bytes(AUTH.verify_key), "acme", EPOCH)
    with pytest.raises(FederationMismatch) as info:
        verify_list(listing(1, ["dev-0"], epoch=b"\x09" * 16), bytes(AUTH.verify_key), "acme", EPOCH)
    assert isinstance(info.value, IncompatibleError)  # a device ends with exit 8 on it
    tampered = bytearray(payload)
    tampered[tampered.index(b"dev-1") + 4] = ord("9")  # rename a device without re-signing
    with pytest.raises(EnrolmentError):
        verify_list(bytes(tampered), bytes(AUTH.verify_key), "acme", EPOCH)


async def test_devices_add_at_once_and_forget_after_the_grace_the_aggregator_the_reverse():
    device_dir = LiveDirectory({d: KEYS[d] for d in ("dev-0", "dev-1")}, serial=1)
    agg_dir = LiveDirectory({d: KEYS[d] for d in ("dev-0", "dev-1")}, serial=1)
    device = EnrolmentFollower(device_dir, bytes(AUTH.verify_key), "acme", epoch=EPOCH, delay_removals=0.3)
    agg = EnrolmentFollower(agg_dir, bytes(AUTH.verify_key), "acme", epoch=EPOCH, delay_additions=0.3)
    change = listing(2, ["dev-0", "dev-2"], revoked=["dev-1"])  # enrol dev-2, revoke dev-1
    assert device.offer(change) is not None and agg.offer(change) is not None
    assert set(device_dir) == {"dev-0", "dev-1", "dev-2"}  # added at once, removal pending
    assert set(agg_dir) == {"dev-0"}  # removed at once, addition pending
    assert set(agg_dir) <= set(device_dir)
    for _ in range(100):
        if set(device_dir) == set(agg_dir) == {"dev-0", "dev-2"}:
            break
        assert set(agg_dir) <= set(device_dir)
        await asyncio.sleep(0.02)
    assert set(device_dir) == set(agg_dir) == {"dev-0", "dev-2"}
    # Replays of the same or an older serial change nothing.
    assert device.offer(change) is None
    assert device.offer(listing(1, ["dev-0", "dev-1"])) is None
    assert set(device_dir) == {"dev-0", "dev-2"} and device_dir.serial == 2


def test_an_empty_live_directory_is_a_valid_secure_configuration(tmp_path):
    from aggregator.config import AggregatorConfig
    from shared.errors import ConfigError
    from shared.mqtt import MqttConfig

    mqtt = MqttConfig(client_id="aggregator")
    config = AggregatorConfig("acme", mqtt, tmp_path, directory=LiveDirectory())
    assert not config.allows("dev-0")
    with pytest.raises(ConfigError, match="directory"):
        AggregatorConfig("acme", mqtt, tmp_path, directory={})
