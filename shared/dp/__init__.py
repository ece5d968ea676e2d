"""Differential privacy for fedmq: noise samplers, noise sizing, privacy accounting, configuration.

Pure numpy/scipy + ``dp-accounting``; no torch, no MQTT. Imports go one way:
config → calibration → accounting → skellam. See docs/privacy.md for the guarantee in words.

* :mod:`shared.dp.noise` — Skellam noise (distributed mode, integer domain), Gaussian noise (central mode).
* :mod:`shared.dp.skellam` — the proven bound for Skellam noise: the Gaussian mechanism that dominates it.
* :mod:`shared.dp.calibration` — inflated sensitivity after quantisation, per-device noise shares under
  dropouts, noise multiplier for an (ε, δ, rounds) target, the Skellam RDP bound (for comparison).
* :mod:`shared.dp.accounting` — :class:`PrivacyAccountant`, round-by-round (ε, δ) with budget checks.
* :mod:`shared.dp.config` — :class:`DPConfig`, the validated settings carried in the round announcement.
"""

from shared.dp.accounting import PrivacyAccountant, accounting_delta, epsilon_for_constant_noise
from shared.dp.calibration import (
    DeviceNoisePlan,
    central_noise_std,
    credited_shares,
    device_noise_plan,
    inflated_l1_bound,
    inflated_l2_bound,
    noise_multiplier_for_target,
    per_device_variance,
    plan_device_noise,
    skellam_epsilon,
    skellam_rdp,
    sum_noise_headroom,
)
from shared.dp.config import DPConfig
from shared.dp.noise import add_central_gaussian_noise, gaussian_noise, secure_generator, skellam_noise
from shared.dp.skellam import skellam_gaussian_slope, skellam_noise_multiplier, skellam_variance_for

__all__ = [
    "DPConfig",
    "DeviceNoisePlan",
    "PrivacyAccountant",
    "accounting_delta",
    "add_central_gaussian_noise",
    "central_noise_std",
    "credited_shares",
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
    "skellam_gaussian_slope",
    "skellam_noise",
    "skellam_noise_multiplier",
    "skellam_rdp",
    "skellam_variance_for",
    "sum_noise_headroom",
]
