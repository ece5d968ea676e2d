"""Staleness weights for semi-asynchronous rounds (FedBuff; FTTE).

A device may contribute a delta it trained on an older snapshot. With staleness ``tau = current version -
base version``, the device multiplies its delta *and* its weight coordinate by ``staleness_weight(tau)``
before encoding, so the weighting survives secure aggregation: the aggregator only ever sees the sums
``sum_i s_i w_i delta_i`` and ``sum_i s_i w_i`` and divides one by the other.

Functions:

* ``fedbuff`` — ``1 / sqrt(1 + tau)`` (Nguyen et al., "Federated Learning with Buffered Asynchronous
  Aggregation", AISTATS 2022, §5).
* ``age-variance`` — our design in the spirit of FTTE (Tenison et al., arXiv 2510.03165), whose exact formula
  is not public: ``(1 + tau)^(-1/2) * min(1, (r / ||delta||)^tau_damp)`` with ``tau_damp = min(tau, 1)``.
  The age factor is FedBuff's; the variance factor damps a *stale* update whose norm exceeds the round's
  reference norm ``r`` (announced by the aggregator: the clip norm, or the norm of recent aggregates), since
  a stale delta that is also large is the one most likely to point away from the current model. Fresh
  updates (``tau = 0``) are never damped, so with no stragglers the rule is plain FedAvg.
* ``none`` — 1 for every staleness up to the maximum (synchronous FedAvg semantics).

Deltas with ``tau > max_staleness`` are discarded on the device and never reach the aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError

FUNCTIONS = ("fedbuff", "age-variance", "none")


@dataclass(frozen=True)
class StalenessPolicy:
    """Announced per round in the round plan (``RoundAnnounce.plan.staleness``)."""

    function: str = "fedbuff"
    max_staleness: int = 4
    reference_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ConfigError("staleness.function", f"{self.function!r} is not one of {FUNCTIONS}")
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ConfigError("staleness.max_staleness", "must be an integer >= 0")
        if not self.reference_norm > 0:
            raise ConfigError("staleness.reference_norm", "must be > 0")

    def to_dict(self) -> dict[str, object]:
        return {
            "function": self.function,
            "max_staleness": self.max_staleness,
            "reference_norm": self.reference_norm,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StalenessPolicy:
        try:
            return cls(str(data["function"]), int(data["max_staleness"]), float(data["reference_norm"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("staleness", f"malformed policy {data!r}: {exc}") from exc

    def accepts(self, tau: int) -> bool:
        return 0 <= tau <= self.max_staleness

    def weight(self, tau: int, delta_norm: float = 0.0) -> float:
        """The factor in (0, 1] for a delta of staleness ``tau`` (and L2 norm ``delta_norm``)."""
        if not self.accepts(tau):
            raise ConfigError("staleness", f"staleness {tau} is outside [0, {self.max_staleness}]")
        if self.function == "none":
            return 1.0
        age = 1.0 / math.sqrt(1.0 + tau)
        if self.function == "fedbuff" or tau == 0 or delta_norm <= self.reference_norm:
            return age
        return age * (self.reference_norm / delta_norm) ** min(tau, 1)
