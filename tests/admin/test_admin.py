"""``fedmq`` admin pieces: enrolment state, Mosquitto password hashes, exports, metrics exposition, and a
rendered mTLS broker that ties the client certificate to the ACL's account."""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from aggregator.hunt import BEYOND_CLIP
from aggregator.metrics import Metrics
from aggregator.store import Store
from fedmq_admin import pki
from fedmq_admin.broker import hash_password, read_passwd
from fedmq_admin.cli import main as admin_main
from fedmq_admin.export import export, read_safetensors
from fedmq_admin.federation import Federation, init_federation
from shared.errors import BrokerAuthError, BrokerTlsError, ConfigError
from shared.layout import ModelLayout
from shared.mqtt import MqttConfig, MqttConnection
from shared.offences import Offences
from shared.quarantine import Quarantine, QuarantinePolicy
from shared.signing import load_or_create_key
from shared.snapshots import make_snapshot
from shared.wire import RoundResult, encode
from simulator.broker import find_mosquitto
from simulator.process import die_with_parent, free_port


def start_generated_broker(root) -> subprocess.Popen:
    """Mosquitto on the config ``fedmq init`` rendered under ``root`` (as an operator would start it)."""
    return subprocess.Popen(
        [find_mosquitto(), "-c", str(root / "broker" / "mosquitto.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
    )  # fmt: skip


def test_password_hashes_are_mosquittos(tmp_path):
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run([tool, "-b", str(passwd), "alice", "open sesame"], check=True)
    digest = read_passwd(passwd)["alice"]
    salt = base64.b64decode(digest.split("$")[3])
    assert hash_password("open sesame", salt) == digest  # bit-exact with mosquitto_passwd's own hash
    assert hash_password("open sesame!", salt) != digest


def test_enrol_and_revoke_change_the_signed_set_and_the_accounts(tmp_path):
    fed = init_federation(tmp_path / "fed", "acme", tls=False)
    assert fed.enrolled().serial == 1 and fed.enrolled().devices == []
    bundle = fed.enroll("dev-0")
    fed.enroll("dev-1")
    listing = Federation(tmp_path / "fed").enrolled()
    assert listing.serial == 3 and sorted(listing.directory()) == ["dev-0", "dev-1"]
    assert listing.directory()["dev-0"] == bytes(load_or_create_key(bundle / "identity.key").verify_key)
    assert set(read_passwd(tmp_path / "fed" / "broker" / "passwd")) == {"aggregator", "dev-0", "dev-1"}
    assert (bundle / "password").stat().st_mode & 0o077 == 0  # secrets readable by their owner only
    assert "password =" not in (bundle / "device.toml").read_text()  # only a reference to the file
    fed.revoke("dev-1")
    listing = fed.enrolled()
    assert sorted(listing.directory()) == ["dev-0"] and listing.revoked == ["dev-1"] and listing.serial == 4
    assert "dev-1" not in read_passwd(tmp_path / "fed" / "broker" / "passwd")
    with pytest.raises(ConfigError, match="revoked"):
        fed.enroll("dev-1")
    with pytest.raises(ConfigError, match="already enrolled"):
        fed.enroll("dev-0")
    with pytest.raises(ConfigError, match="aggregator"):
        fed.enroll("aggregator")


def test_export_writes_the_stored_model_bit_exactly(tmp_path):
    layout = ModelLayout.from_shapes([("0.weight", (3, 4)), ("0.bias", (3,))])
    weights = np.random.default_rng(0).standard_normal(layout.dim).astype(np.float32)
    store = Store(tmp_path / "store")
    store.write_snapshot(7, 6, encode(make_snapshot("acme", 7, 6, layout, weights)), {})
    store.close()
    export(tmp_path / "store", tmp_path / "m.safetensors")
    tensors, meta = read_safetensors(tmp_path / "m.safetensors")
    assert meta == {"federation": "acme", "version": "7", "round": "6", "format": "pt"}
    assert np.array_equal(tensors["0.weight"].ravel(), weights[:12]) and tensors["0.weight"].shape == (3, 4)
    assert np.array_equal(tensors["0.bias"], weights[12:])
    export(tmp_path / "store", tmp_path / "m.npz")
    assert np.array_equal(np.load(tmp_path / "m.npz")["0.bias"], weights[12:])


def test_metrics_exposition_counts_rounds_by_status_and_reason(tmp_path):
    config = SimpleNamespace(federation="acme", directory={"dev-0": b"k"}, allows=lambda d: d == "dev-0")
    agg = SimpleNamespace(config=config, version=3, store=None, last_secure=None, accountant=None, _conn=None)
    metrics = Metrics(agg)
    metrics.on_round(RoundResult(0, "closed", 1, 3), np.zeros(1))
    reason = "1 devices advertised keys < min_clients 2"
    metrics.on_round(RoundResult(1, "abandoned", 1, 1, reason), np.zeros(1))
    agg.faults.record("dev-9", "fl/acme/r/1/keys/dev-9", "ProtocolError", "unknown sender")
    text = metrics.render()
    assert 'fedmq_rounds_total{status="closed",reason="none"} 1' in text
    assert 'fedmq_rounds_total{status="abandoned",reason="too_few_devices"} 1' in text
    assert 'fedmq_rejected_messages_total{rule="ProtocolError",sender="unknown"} 1' in text
    assert "fedmq_model_version 3" in text and "fedmq_devices_enrolled 1" in text
    for line in text.splitlines():  # every sample line is `name{labels} value` or `name value`
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2
    assert metrics.health()[0] == 503  # not connected to a broker


def test_metrics_count_named_devices_and_quarantines():
    config = SimpleNamespace(federation="acme", directory={"dev-0": b"k"}, allows=lambda d: d == "dev-0")
    offences = Offences()
    offences.quarantine.watch({BEYOND_CLIP})
    agg = SimpleNamespace(config=config, version=3, store=None, last_secure=None, accountant=None, _conn=None,
                          offences=offences)  # fmt: skip
    metrics = Metrics(agg)
    offences.record("dev-0", BEYOND_CLIP, "in every refused aggregate")
    text = metrics.render()
    assert 'fedmq_offences_total{rule="influence-beyond-clip"} 1' in text
    assert "fedmq_devices_quarantined 1" in text


def test_fedmq_quarantine_lists_and_lifts(tmp_path, capsys):
    store = tmp_path / "aggregator" / "store"
    store.mkdir(parents=True)
    quarantine = Quarantine(policy=QuarantinePolicy(rounds=5))
    quarantine.watch({BEYOND_CLIP})
    quarantine.begin_round(7, 0.0)
    quarantine.offence("dev-3", BEYOND_CLIP)
    quarantine.save(store)
    assert admin_main(["quarantine", "--dir", str(tmp_path)]) == 0
    assert "dev-3" in capsys.readouterr().out
    assert admin_main(["quarantine", "--dir", str(tmp_path), "--lift", "dev-9"]) == 2  # never quarantined
    assert admin_main(["quarantine", "--dir", str(tmp_path), "--lift", "dev-3"]) == 0
    # the aggregator's next round applies it
    assert quarantine.apply_lift_requests(store) == ["dev-3"] and not quarantine.blocks("dev-3")


@pytest.mark.broker
async def test_mtls_ties_the_certificate_to_the_account(tmp_path):
    port = free_port()
    fed = init_federation(tmp_path / "fed", "acme", port=port, bind="127.0.0.1", client_certs=True)
    fed.enroll("dev-0")
    conf = (tmp_path / "fed" / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    broker = start_generated_broker(tmp_path / "fed")

    def cert_config(folder, client_id: str, **overrides) -> MqttConfig:
        values = {"host": "localhost", "port": port, "client_id": client_id, "tls": True,
                  "ca_file": str(folder / "ca.crt"), "cert_file": str(folder / "client.crt"),
                  "key_file": str(folder / "client.key"), "reconnect_min_s": 0.05, **overrides}  # fmt: skip
        return MqttConfig(**values)

    try:
        agg_dir, dev_dir = tmp_path / "fed" / "aggregator", tmp_path / "fed" / "devices" / "dev-0"
        async with (
            MqttConnection(cert_config(agg_dir, "aggregator"), ["fl/acme/status/+"]) as watcher,
            MqttConnection(cert_config(dev_dir, "dev-0")) as device,
        ):
            await watcher.wait_connected(30)
            await device.wait_connected(30)
            # The certificate says dev-0: the ACL lets it write its own presence, not another device's.
            await device.publish("fl/acme/status/dev-1", b"forged", retain=True)
            await device.publish("fl/acme/status/dev-0", b"mine", retain=True)
            seen = []
            async with asyncio.timeout(30):
                while b"mine" not in seen:
                    msg = await watcher.next_message(timeout=1.0)
                    if msg is not None:
                        seen.append(bytes(msg.payload))
            assert b"forged" not in seen
        # A certificate from another CA is refused, and the connection says so instead of retrying forever.
        # Under TLS 1.3 the broker's alert ends an attempt only in paho's log: the attempt itself waits out
        # connect_timeout_s (hence a short one here, not the 10 s default). And now and then (about 1 in 60
        # attempts on a loaded machine) the client reads "EOF occurred in violation of protocol" instead of
        # the alert, which is not a refusal and restarts the count of two in a row: the wait leaves room
        # for several attempts, not exactly two.
        evil_ca = pki.make_ca(tmp_path / "evil", "evil")
        pki.issue(evil_ca, "dev-0", tmp_path / "evil", "client")
        evil = cert_config(tmp_path / "evil", "dev-0", ca_file=str(dev_dir / "ca.crt"), fatal_retries=2,
                           connect_timeout_s=3.0)  # fmt: skip
        async with MqttConnection(evil) as conn:
            with pytest.raises(BrokerTlsError, match="unknown ca"):
                await conn.wait_connected(60)
    finally:
        broker.terminate()
        broker.wait(timeout=10)


@pytest.mark.broker
async def test_a_revoked_account_loses_its_open_connection_at_the_brokers_reload(tmp_path):
    """``fedmq revoke`` + SIGHUP is enough even against a device that ignores the signed revocation: the
    generated Mosquitto config re-checks every live session's credentials on reload, drops the revoked
    account's connection and refuses its reconnects, while other devices stay connected."""
    port = free_port()
    fed = init_federation(tmp_path / "fed", "acme", port=port, bind="127.0.0.1", tls=False)
    for device in ("dev-0", "dev-1"):
        fed.enroll(device)
    broker = start_generated_broker(tmp_path / "fed")

    def account(device: str) -> MqttConfig:
        password = (tmp_path / "fed" / "devices" / device / "password").read_text().strip()
        return MqttConfig(host="127.0.0.1", port=port, client_id=device, username=device, password=password,
                          reconnect_min_s=0.05, reconnect_max_s=0.2, fatal_retries=2)  # fmt: skip

    try:
        async with MqttConnection(account("dev-0")) as rogue, MqttConnection(account("dev-1")) as honest:
            await rogue.wait_connected(30)
            await honest.wait_connected(30)
            fed.revoke("dev-0")
            broker.send_signal(signal.SIGHUP)
            async with asyncio.timeout(30):
                cause = await rogue.failed()  # dropped at the reload, then refused at every reconnect
            assert isinstance(cause, BrokerAuthError)
            assert honest.connected
            await honest.publish("fl/acme/status/dev-1", b"still here", retain=True)  # its session works
    finally:
        broker.terminate()
        broker.wait(timeout=10)


@pytest.mark.broker
async def test_a_revoked_certificate_is_refused_and_its_open_session_can_publish_nothing(tmp_path):
    """With client certificates a reload does not end live sessions, so ``fedmq revoke`` also writes a
    CRL (new TLS handshakes with the certificate fail) and an ACL block that denies the account every
    topic (the open session's next publish goes nowhere); other devices are untouched."""
    port = free_port()
    fed = init_federation(tmp_path / "fed", "acme", port=port, bind="127.0.0.1", client_certs=True)
    for device in ("dev-0", "dev-1"):
        fed.enroll(device)
    broker = start_generated_broker(tmp_path / "fed")

    def cert_config(name: str, client_id: str, **overrides: float) -> MqttConfig:
        folder = tmp_path / "fed" / name
        return MqttConfig(host="localhost", port=port, client_id=client_id, tls=True,
                          ca_file=str(folder / "ca.crt"), cert_file=str(folder / "client.crt"),
                          key_file=str(folder / "client.key"), reconnect_min_s=0.05, reconnect_max_s=0.2,
                          fatal_retries=2, **overrides)  # fmt: skip

    async def refused_once_reloaded() -> BrokerTlsError:
        """A fresh session with the revoked certificate, again until the new CRL refuses one: the reload
        is asynchronous and this is its observable end (Mosquitto's single event loop reloads the CRL and
        the ACL in one step, so the ACL is in force too). Attempts get a short connect timeout: a refused
        one waits it out (test_mtls_ties_the_certificate_to_the_account)."""
        revoked = cert_config("devices/dev-0", "dev-0-again", connect_timeout_s=3.0)
        async with asyncio.timeout(90):
            while True:
                async with MqttConnection(revoked) as again:
                    try:
                        await again.wait_connected(60)
                    except BrokerTlsError as exc:
                        return exc

    async def seen_until(watcher: MqttConnection, wanted: bytes) -> list[bytes]:
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            while wanted not in seen:
                msg = await watcher.next_message(timeout=1.0)
                if msg is not None:
                    seen.append(bytes(msg.payload))
        return seen

    try:
        async with (
            MqttConnection(cert_config("aggregator", "aggregator"), ["fl/acme/status/+"]) as watcher,
            MqttConnection(cert_config("devices/dev-0", "dev-0")) as rogue,
            MqttConnection(cert_config("devices/dev-1", "dev-1")) as honest,
        ):
            for conn in (watcher, rogue, honest):
                await conn.wait_connected(30)
            await rogue.publish("fl/acme/status/dev-0", b"before", retain=False)
            assert b"before" in await seen_until(watcher, b"before")
            fed.revoke("dev-0")
            assert "crlfile" in (tmp_path / "fed" / "broker" / "mosquitto.conf").read_text()
            broker.send_signal(signal.SIGHUP)
            await refused_once_reloaded()  # the revoked certificate opens no new session
            assert rogue.connected  # a reload keeps certificate sessions ...
            await rogue.publish("fl/acme/status/dev-0", b"after", retain=False)
            await honest.publish("fl/acme/status/dev-1", b"honest", retain=False)
            assert b"after" not in await seen_until(watcher, b"honest")  # ... but the ACL denies them all
            assert honest.connected
    finally:
        broker.terminate()
        broker.wait(timeout=10)
