"""The one validated description of a federation's differential-privacy settings.

A :class:`DPConfig` rides in the round announcement (``to_dict``/``from_dict`` use plain types only), so
devices and the aggregator size noise and account privacy from the same numbers. Validation is strict on
purpose: regulated users need "DP on" to mean DP on, so any combination that would silently train without
noise (or with a noise level nobody asked for) is a :class:`~shared.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.dp.calibration import noise_multiplier_for_target
from shared.errors import ConfigError

MODES = ("off", "distributed", "central")
MECHANISMS = ("skellam",)

#: Failure probability of conditional randomized rounding used in the norm-bound inflation (Kairouz et al.
#: 2021, Thm 1). ``exp(-0.5)`` is the default of TensorFlow Federated's distributed-DP aggregator.
DEFAULT_ROUNDING_BETA = math.exp(-0.5)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_finite(field: str, value: object) -> float:
    if not _is_number(value):
        raise ConfigError(field, f"must be a number, got {type(value).__name__}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number <= 0.0:
        raise ConfigError(field, f"must be a finite number > 0, got {value!r}")
    return number


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy settings of a federation.

    Attributes:
        mode: ``"off"`` (no DP, and then no other DP field may be set), ``"distributed"`` (every device adds
            its share of integer noise before masking; the aggregator never sees a noise-free sum) or
            ``"central"`` (the aggregator adds Gaussian noise to the unmasked sum; it is trusted).
        mechanism: integer noise of distributed mode; only ``"skellam"`` (Agarwal et al., NeurIPS 2021).
        noise_multiplier: the multiplier of the Gaussian mechanism that provably dominates a round: noise
            std of the *sum* over the L2 sensitivity of one device in central mode; in distributed mode
            the proven Skellam multiplier (:mod:`shared.dp.skellam`) the devices' noise is sized to meet.
            Give this or the ``target_*`` triple, never both.
        target_epsilon, target_rounds: calibrate ``noise_multiplier`` so that ``target_rounds`` rounds cost
            at most ``target_epsilon`` at ``delta`` — a proven bound for the mechanism that runs
            (see :func:`shared.dp.calibration.noise_multiplier_for_target`).
        delta: the δ of every (ε, δ) statement; must be well below 1/(number of devices).
        clip_norm: L2 clip of each device's flattened update (float units) — the user-level sensitivity.
        sampling_q: probability with which each device independently (Poisson) takes part in a round;
            ``None`` means no sampling and therefore no privacy amplification.
        dropout_margin: fraction of the expected devices that may drop out while the sum still carries
            the full target noise (distributed mode).
        budget_epsilon: stop training before a round would push ε above this; ``None`` = never stop.
        rounding_beta: failure probability β of conditional randomized rounding in the codec, used in the
            inflated sensitivity bound.
    """

    mode: str = "off"
    mechanism: str = "skellam"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    target_rounds: int | None = None
    delta: float | None = None
    clip_norm: float | None = None
    sampling_q: float | None = None
    dropout_margin: float = 0.1
    budget_epsilon: float | None = None
    rounding_beta: float = DEFAULT_ROUNDING_BETA

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def validate(self) -> DPConfig:
        """Check every field; return ``self`` so it chains. Raises ConfigError naming the first bad field."""
        if self.mode not in MODES:
            raise ConfigError("mode", f"must be one of {MODES}, got {self.mode!r}")
        if self.mode == "off":
            stray = [
                name
                for name in ("noise_multiplier", "target_epsilon", "target_rounds", "budget_epsilon")
                if getattr(self, name) is not None
            ]
            if stray:
                raise ConfigError(
                    "mode",
                    f"is 'off' but {stray[0]!r} is set; DP would be silently disabled — "
                    "set mode to 'distributed' or 'central', or drop the DP parameters",
                )
            return self
        if self.mechanism not in MECHANISMS:
            raise ConfigError("mechanism", f"must be one of {MECHANISMS}, got {self.mechanism!r}")
        has_target = self.target_epsilon is not None or self.target_rounds is not None
        if self.noise_multiplier is not None and has_target:
            raise ConfigError(
                "noise_multiplier", "give either noise_multiplier or target_epsilon/rounds, not both"
            )
        if self.noise_multiplier is None and not has_target:
            raise ConfigError(
                "noise_multiplier",
                f"mode {self.mode!r} needs a noise_multiplier > 0 or a target_epsilon with target_rounds",
            )
        if self.noise_multiplier is not None:
            _positive_finite("noise_multiplier", self.noise_multiplier)
        else:
            if self.target_epsilon is None:
                raise ConfigError("target_epsilon", "target_rounds is set but target_epsilon is missing")
            _positive_finite("target_epsilon", self.target_epsilon)
            if isinstance(self.target_rounds, bool) or not isinstance(self.target_rounds, int):
                raise ConfigError("target_rounds", f"must be an integer >= 1, got {self.target_rounds!r}")
            if self.target_rounds < 1:
                raise ConfigError("target_rounds", f"must be an integer >= 1, got {self.target_rounds!r}")
        if self.delta is None:
            raise ConfigError(
                "delta", "is required when DP is on (e.g. 1e-5, well below 1/number of devices)"
            )
        delta = _positive_finite("delta", self.delta)
        if delta >= 1.0:
            raise ConfigError("delta", f"must be in (0, 1), got {self.delta!r}")
        if self.clip_norm is None:
            raise ConfigError("clip_norm", "is required when DP is on: it bounds each device's contribution")
        _positive_finite("clip_norm", self.clip_norm)
        if self.sampling_q is not None:
            q = _positive_finite("sampling_q", self.sampling_q)
            if q > 1.0:
                raise ConfigError("sampling_q", f"must be in (0, 1] or None, got {self.sampling_q!r}")
        if not _is_number(self.dropout_margin) or not 0.0 <= float(self.dropout_margin) < 1.0:
            raise ConfigError("dropout_margin", f"must be in [0, 1), got {self.dropout_margin!r}")
        if self.budget_epsilon is not None:
            _positive_finite("budget_epsilon", self.budget_epsilon)
        if not _is_number(self.rounding_beta) or not 0.0 <= float(self.rounding_beta) < 1.0:
            raise ConfigError("rounding_beta", f"must be in [0, 1), got {self.rounding_beta!r}")
        return self

    def resolved_noise_multiplier(self) -> float:
        """The noise multiplier to use: the configured one, or the one calibrated from the target.

        Calibration is deterministic, so every party computes the same value from the same config.
        """
        self.validate()
        if not self.enabled:
            raise ConfigError("mode", "DP is off; there is no noise multiplier")
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        assert self.target_epsilon is not None and self.target_rounds is not None and self.delta is not None
        return noise_multiplier_for_target(
            float(self.target_epsilon), float(self.delta), int(self.target_rounds), self.sampling_q
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain ``str``/``int``/``float``/``None`` values, safe for msgpack."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DPConfig:
        """Inverse of :meth:`to_dict`; unknown keys are errors (never half-understand a newer sender)."""
        known = {field.name for field in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(str(key), "unknown DP configuration field")
        return cls(**dict(data)).validate()
