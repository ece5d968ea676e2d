"""DPConfig validation names the bad field, and DP can never be silently off."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shared.dp.calibration import noise_multiplier_for_target
from shared.dp.config import DPConfig
from shared.errors import ConfigError

VALID: dict[str, Any] = {
    "mode": "distributed",
    "noise_multiplier": 1.0,
    "delta": 1e-5,
    "clip_norm": 1.0,
    "sampling_q": 0.05,
    "dropout_margin": 0.1,
    "budget_epsilon": 8.0,
}


def _field_of(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as error:
        DPConfig(**{**VALID, **overrides}).validate()
    return error.value.field


def test_valid_configs() -> None:
    DPConfig(**VALID).validate()
    DPConfig().validate()  # off
    DPConfig(mode="central", noise_multiplier=0.8, delta=1e-6, clip_norm=0.1).validate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mode": "on"}, "mode"),
        ({"mechanism": "laplace"}, "mechanism"),
        ({"noise_multiplier": None}, "noise_multiplier"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"noise_multiplier": "1"}, "noise_multiplier"),
        ({"target_epsilon": 2.0, "target_rounds": 10}, "noise_multiplier"),
        ({"noise_multiplier": None, "target_rounds": 10}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": 2.0}, "target_rounds"),
        ({"noise_multiplier": None, "target_epsilon": 2.0, "target_rounds": True}, "target_rounds"),
        ({"delta": None}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"clip_norm": None}, "clip_norm"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"sampling_q": 0.0}, "sampling_q"),
        ({"sampling_q": 1.5}, "sampling_q"),
        ({"dropout_margin": 1.0}, "dropout_margin"),
        ({"budget_epsilon": 0.0}, "budget_epsilon"),
        ({"rounding_beta": 1.0}, "rounding_beta"),
    ],
)
def test_validation_names_the_field(overrides: dict[str, Any], field: str) -> None:
    assert _field_of(**overrides) == field


def test_dp_never_silently_off() -> None:
    with pytest.raises(ConfigError) as error:
        DPConfig(mode="off", noise_multiplier=1.0).validate()
    assert error.value.field == "mode"
    with pytest.raises(ConfigError) as error:
        DPConfig(mode="distributed", delta=1e-5, clip_norm=1.0).validate()
    assert error.value.field == "noise_multiplier"


def test_dict_round_trip_with_plain_types() -> None:
    config = DPConfig(**VALID).validate()
    data = config.to_dict()
    assert all(isinstance(value, (str, int, float, type(None))) for value in data.values())
    assert DPConfig.from_dict(data) == config
    with pytest.raises(ConfigError) as error:
        DPConfig.from_dict({**data, "epsilon": 1.0})
    assert error.value.field == "epsilon"
    with pytest.raises(ConfigError) as error:
        DPConfig.from_dict({**data, "noise_multiplier": 0})
    assert error.value.field == "noise_multiplier"


def test_resolved_noise_multiplier() -> None:
    assert DPConfig(**VALID).resolved_noise_multiplier() == 1.0
    target = DPConfig(
        mode="distributed", target_epsilon=3.0, target_rounds=40, delta=1e-5, clip_norm=1.0, sampling_q=0.05
    )
    assert target.resolved_noise_multiplier() == noise_multiplier_for_target(3.0, 1e-5, 40, 0.05)
    with pytest.raises(ConfigError) as error:
        DPConfig().resolved_noise_multiplier()
    assert error.value.field == "mode"
