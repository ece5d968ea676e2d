"""Differential privacy for fedmq: noise samplers, noise sizing, privacy accounting, configuration.

Pure numpy + ``dp-accounting``; no torch, no MQTT. See docs/privacy.md for the guarantee in words.

* :mod:`shared.dp.noise` — Skellam noise (distributed mode, integer domain), Gaussian noise (central mode).
* :mod:`shared.dp.calibration` — inflated sensitivity after quantisation, per-device noise shares under
  dropouts, noise multiplier for an (ε, δ, rounds) target, the Skellam RDP bound.
* :mod:`shared.dp.accounting` — :class:`PrivacyAccountant`, round-by-round (ε, δ) with budget checks.
* :mod:`shared.dp.config` — :class:`DPConfig`, the validated settings carried in the round announcement.
"""

from shared.dp.accounting import PrivacyAccountant, epsilon_for_constant_noise
from shared.dp.calibration import (
    DeviceNoisePlan,
    central_noise_std,
    device_noise_plan,
    inflated_l1_bound,
    inflated_l2_bound,
    noise_multiplier_for_target,
    per_device_variance,
    plan_device_noise,
    skellam_epsilon,
    skellam_rdp,
)
from shared.dp.config import DPConfig
from shared.dp.noise import add_central_gaussian_noise, gaussian_noise, secure_generator, skellam_noise

__all__ = [
    "DPConfig",
    "DeviceNoisePlan",
    "PrivacyAccountant",
    "add_central_gaussian_noise",
    "central_noise_std",
    "device_noise_plan",
    "epsilon_for_constant_noise",
    "gaussian_noise",
    "inflated_l1_bound",
    "inflated_l2_bound",
    "noise_multiplier_for_target",
    "per_device_variance",
    "plan_device_noise",
    "secure_generator",
    "skellam_epsilon",
    "skellam_noise",
    "skellam_rdp",
]
