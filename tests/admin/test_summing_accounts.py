"""``fedmq init --summing-workers N``: the workers' broker accounts, their ACL lines and the aggregator
setting; and the setting itself (TOML key, environment variable, flag, validation)."""

from __future__ import annotations

import base64

import pytest

from aggregator.cli import OPTIONS, build_config, parse_args
from fedmq_admin.broker import acl_rules, hash_password, read_passwd
from fedmq_admin.federation import init_federation
from shared.errors import ConfigError
from shared.settings import resolve
from shared.topics import Topics


def test_init_makes_an_account_and_an_acl_block_per_worker(tmp_path):
    fed = init_federation(tmp_path / "fed", "acme", tls=False, summing_workers=2)
    passwd = read_passwd(tmp_path / "fed" / "broker" / "passwd")
    assert set(passwd) == {"aggregator", "aggregator-sum0", "aggregator-sum1"}
    password = (tmp_path / "fed" / "aggregator" / "password").read_text().strip()
    for user in ("aggregator-sum0", "aggregator-sum1"):  # the aggregator's password, hashed per account
        salt = base64.b64decode(passwd[user].split("$")[3])
        assert hash_password(password, salt) == passwd[user]
    acl = (tmp_path / "fed" / "broker" / "acl").read_text()
    assert acl == acl_rules(2, federation="acme", devices=[])
    for user in ("aggregator-sum0", "aggregator-sum1"):
        block = acl.split(f"user {user}\n", 1)[1].split("\n", 1)[0]
        assert block == "topic read fl/acme/r/+/masked/+"  # read-only, its federation's masked inputs only
    assert "aggregator-sum2" not in acl
    fed.render_broker()  # re-rendering keeps them
    assert (tmp_path / "fed" / "broker" / "acl").read_text() == acl
    # The aggregator's config file asks for the workers; the setting resolves from it.
    config = tmp_path / "fed" / "aggregator" / "aggregator.toml"
    values = resolve(OPTIONS, parse_args(["--config", str(config)]), environ={})
    assert values["aggregator.summing_workers"] == 2
    with pytest.raises(ConfigError, match="aggregator account"):
        fed.enroll("aggregator-sum7")


def test_init_without_workers_keeps_the_shipped_acl(tmp_path):
    init_federation(tmp_path / "fed", "acme", tls=False)
    assert (tmp_path / "fed" / "broker" / "acl").read_text() == acl_rules(federation="acme", devices=[])
    assert "user aggregator-sum" not in acl_rules(federation="acme", devices=[])
    assert set(read_passwd(tmp_path / "fed" / "broker" / "passwd")) == {"aggregator"}


def test_workers_need_password_accounts_and_a_sane_count(tmp_path):
    with pytest.raises(ConfigError, match="client-certs"):
        init_federation(tmp_path / "a", "acme", tls=True, client_certs=True, summing_workers=2)
    with pytest.raises(ConfigError, match="summing_workers"):
        init_federation(tmp_path / "b", "acme", tls=False, summing_workers=-1)


def _config(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    base = ["--store", "/tmp/unused", "--mode", "plain"]
    return build_config(resolve(OPTIONS, parse_args(base + argv), environ=environ or {}))


def test_summing_workers_setting_from_flag_and_environment():
    with pytest.raises(ConfigError, match="mode='secure'"):
        _config(["--summing-workers", "2"])
    with pytest.raises(ConfigError, match="mode='secure'"):
        _config([], {"FEDMQ_AGGREGATOR_SUMMING_WORKERS": "3"})
    assert _config([]).summing_workers == 0
    with pytest.raises(ConfigError, match="summing_workers"):
        _config(["--summing-workers", "-1"])


def test_the_aggregator_leaves_unchunked_masked_inputs_to_the_workers():
    topics = Topics("f")
    filters = topics.rounds_but_masked()
    assert topics.masked_inputs == "f".join(["fl/", "/r/+/masked/+"])
    assert "fl/f/r/+/masked/+/c/+" in filters and topics.rounds_all not in filters
    assert {f.split("/")[4] for f in filters} == {"keys", "shares", "unmask", "update", "masked"}


def test_worker_sessions_are_their_own_accounts_and_end_with_the_connection():
    from aggregator.summing import worker_mqtt
    from shared.mqtt import MqttConfig

    base = MqttConfig(client_id="aggregator", username="aggregator", password="secret")
    worker = worker_mqtt(base, 1)
    assert (worker.client_id, worker.username, worker.password) == (
        "aggregator-sum1",
        "aggregator-sum1",
        "secret",
    )
    # A persistent session would keep receiving a share of the group's inputs after its worker died.
    assert worker.session_expiry_s == 0 and base.session_expiry_s > 0
    anonymous = worker_mqtt(MqttConfig(client_id="agg"), 0)
    assert anonymous.client_id == "agg-sum0" and anonymous.username is None


def test_summing_workers_command_changes_an_existing_federation(tmp_path):
    from fedmq_admin.cli import main

    fed = init_federation(tmp_path / "fed", "acme", tls=False)
    fed.enroll("dev-0")
    assert main(["summing-workers", "--dir", str(tmp_path / "fed"), "3"]) == 0
    passwd = read_passwd(tmp_path / "fed" / "broker" / "passwd")
    assert set(passwd) == {"aggregator", "dev-0", "aggregator-sum0", "aggregator-sum1", "aggregator-sum2"}
    acl = (tmp_path / "fed" / "broker" / "acl").read_text()
    assert "user aggregator-sum2\ntopic read fl/acme/r/+/masked/+" in acl
    config = tmp_path / "fed" / "aggregator" / "aggregator.toml"
    values = resolve(OPTIONS, parse_args(["--config", str(config)]), environ={})
    assert values["aggregator.summing_workers"] == 3
    assert main(["summing-workers", "--dir", str(tmp_path / "fed"), "1"]) == 0  # fewer: the rest go
    assert set(read_passwd(tmp_path / "fed" / "broker" / "passwd")) == {
        "aggregator",
        "dev-0",
        "aggregator-sum0",
    }
    assert "aggregator-sum1" not in (tmp_path / "fed" / "broker" / "acl").read_text()
    values = resolve(OPTIONS, parse_args(["--config", str(config)]), environ={})
    assert values["aggregator.summing_workers"] == 1
    assert config.read_text().count("summing_workers =") == 1
