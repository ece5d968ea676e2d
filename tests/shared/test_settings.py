"""Settings: TOML file < environment < flags; secrets never from flags; every error names its field."""

from __future__ import annotations

import argparse

import pytest

from shared.errors import ConfigError
from shared.settings import Option, add_arguments, read_secret, resolve

OPTIONS = [
    Option("federation", default="demo", flag="--federation"),
    Option("rounds.min_clients", type="int", default=2),
    Option("rounds.gap", type="float", default=0.0, flag="--round-gap"),
    Option("codec.rotation", type="bool", default=True),
    Option("aggregator.store", type="path"),
    Option("broker.password", secret=True),
    Option("broker.password_file", type="path"),
    Option("enrolment.authority_key", type="hexkey"),
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, OPTIONS)
    return parser.parse_args(argv)


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = tmp_path / "conf" / "a.toml"
    config.parent.mkdir()
    config.write_text('federation = "file"\n[rounds]\nmin_clients = 5\ngap = 1.5\n'
                      '[aggregator]\nstore = "st"\n')  # fmt: skip
    values = resolve(OPTIONS, parse(["--config", str(config), "--round-gap", "2"]),
                     {"FEDMQ_ROUNDS_MIN_CLIENTS": "7"})  # fmt: skip
    assert values["federation"] == "file"  # file over default
    assert values["rounds.min_clients"] == 7  # environment over file
    assert values["rounds.gap"] == 2.0  # flag over file
    assert values["codec.rotation"] is True  # default
    assert values["aggregator.store"] == config.parent.resolve() / "st"  # relative to the file's folder


def test_secrets_have_no_flag_and_come_from_file_or_environment(tmp_path):
    with pytest.raises(SystemExit):
        parse(["--password", "x"])
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    values = resolve(OPTIONS, parse([]), {"FEDMQ_BROKER_PASSWORD_FILE": str(secret)})
    assert read_secret(values, "broker.password") == "s3cret"
    values = resolve(OPTIONS, parse([]), {"FEDMQ_BROKER_PASSWORD": "inline"})
    assert read_secret(values, "broker.password") == "inline"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[rounds]\nmin_clinets = 3\n", "rounds.min_clinets"),
        ('[rounds]\nmin_clients = "three"\n', "rounds.min_clients"),
        ("[codec]\nrotation = 1.5\n", "codec.rotation"),
        ('[enrolment]\nauthority_key = "abcd"\n', "enrolment.authority_key"),
        ("federation = \n", "config"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, text, field):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve(OPTIONS, parse(["--config", str(config)]), {})
    assert info.value.field == field


def test_environment_values_are_checked_too():
    with pytest.raises(ConfigError, match="FEDMQ_CODEC_ROTATION") as info:
        resolve(OPTIONS, parse([]), {"FEDMQ_CODEC_ROTATION": "maybe"})
    assert info.value.field == "codec.rotation"


def test_every_service_setting_is_documented():
    """docs/operations.md lists every setting of both service CLIs with its environment variable."""
    from pathlib import Path

    from aggregator.cli import OPTIONS as AGGREGATOR
    from edge_client.cli import OPTIONS as EDGE

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for option in [*AGGREGATOR, *EDGE]:
        assert f"`{option.key}`" in doc and f"`{option.env}`" in doc, option.key
