"""Privacy accounting across rounds with Google's ``dp-accounting`` library.

Each round is one release of a noised sum of clipped per-device updates, recorded as the noise multiplier
z of the *Gaussian mechanism that provably dominates it*: for central mode the Gaussian noise std over the
L2 sensitivity; for distributed Skellam rounds the proven multiplier of the noise actually present
(:func:`shared.dp.skellam.skellam_noise_multiplier` via ``DeviceNoisePlan.noise_multiplier_present``).
Rounds compose; different rounds may carry different noise (dropouts change how many noise shares reached
the sum). Every ε this module reports is therefore an upper bound for the mechanism that ran.

δ reservation: the Skellam domination holds up to a total-variation slack (below 1e-200 per coordinate
and round, :mod:`shared.dp.skellam`). A fraction ``TAIL_DELTA_FRACTION`` of δ is set aside for it — ε is
computed at ``accounting_delta(δ)`` — and :func:`tail_slack_ok` checks that the slack, which grows like
e^ε, fits in that reserve (it does for any ε below about 100; above, ε is reported as ∞).

* With Poisson sampling (each device takes part independently with probability q < 1) a round is a
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` and is accounted with the privacy-loss-distribution
  (PLD) accountant (Koskela et al. 2020; Doroshenko et al. 2022), which is tight up to discretisation and
  always errs on the pessimistic side.
* Without sampling (q = None or 1) there is no amplification. T Gaussian releases with multipliers z_t
  compose exactly into one Gaussian release with multiplier (Σ z_t⁻²)^(-1/2) (Dong, Roth, Su 2019,
  Gaussian DP), whose (ε, δ) is computed analytically (Balle & Wang 2018) — exact and instantaneous.

Speed: the demo asks for ε every round. The accountant keeps the composed PLD of all sampled rounds and
composes one more round incrementally (≈15 ms at the default discretisation), reuses the look-ahead
computed by :meth:`PrivacyAccountant.epsilon_if_next` when that round is then recorded, and caches each
round's PLD. A round whose multiplier is within ``noise_grid`` (relative) *above* an already cached one
reuses the cached, smaller multiplier — pessimistic, so ε can only be overstated (by at most about that
fraction), never understated.
"""

from __future__ import annotations

import logging
import math
from types import EllipsisType
from typing import Any

import numpy as np
from dp_accounting import get_epsilon_gaussian
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from shared.dp.skellam import MAX_DIM, TAIL_TV
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

PLD = pld_lib.PrivacyLossDistribution
DEFAULT_DISCRETIZATION = 1e-4  # dp-accounting's own default for PLDAccountant
DEFAULT_NOISE_GRID = 0.01
#: Fraction of δ reserved for the Skellam bound's tail slack.
TAIL_DELTA_FRACTION = 1e-9


def accounting_delta(delta: float) -> float:
    """The δ at which ε is computed: the configured δ less the reserve for the Skellam tail slack."""
    return float(delta) * (1.0 - TAIL_DELTA_FRACTION)


def tail_slack_ok(epsilon: float, delta: float, rounds: int) -> bool:
    """True when the Skellam tail slack of ``rounds`` rounds fits in the reserved part of δ at ε.

    The slack is at most (1 + e^ε) · rounds · MAX_DIM · 2·TAIL_TV (both sides of every coordinate of every
    round; :mod:`shared.dp.skellam`), compared in logs.
    """
    if rounds <= 0:
        return True
    if math.isinf(epsilon):
        return True
    log_slack = math.log(rounds) + math.log(MAX_DIM) + math.log(2.0 * TAIL_TV) + float(
        np.logaddexp(0.0, epsilon)
    )
    return log_slack <= math.log(float(delta) * TAIL_DELTA_FRACTION)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < float(delta) < 1.0:
        raise ConfigError("delta", f"must be in (0, 1), got {delta!r}")
    return float(delta)


def normalise_sampling_q(sampling_q: float | None) -> float | None:
    """``None`` for "no sampling" (q = None or q = 1); otherwise q in (0, 1). Raises ConfigError."""
    if sampling_q is None:
        return None
    if isinstance(sampling_q, bool) or not isinstance(sampling_q, (int, float)):
        raise ConfigError("sampling_q", f"must be a number in (0, 1] or None, got {sampling_q!r}")
    q = float(sampling_q)
    if not 0.0 < q <= 1.0:
        raise ConfigError("sampling_q", f"must be in (0, 1] or None, got {sampling_q!r}")
    return None if q == 1.0 else q


def _check_noise_multiplier(noise_multiplier: float) -> float:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise ConfigError("noise_multiplier", f"must be a number, got {noise_multiplier!r}")
    z = float(noise_multiplier)
    if math.isnan(z) or z < 0.0:
        raise ConfigError("noise_multiplier", f"must be >= 0, got {noise_multiplier!r}")
    return z


def sampled_gaussian_pld(
    noise_multiplier: float, sampling_q: float, value_discretization_interval: float = DEFAULT_DISCRETIZATION
) -> pld_lib.PrivacyLossDistribution:
    """PLD of one Poisson-subsampled Gaussian release (add-or-remove-one neighbours, sensitivity 1)."""
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sampling_q,
        value_discretization_interval=value_discretization_interval,
    )


def epsilon_for_constant_noise(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sampling_q: float | None,
    *,
    value_discretization_interval: float = DEFAULT_DISCRETIZATION,
) -> float:
    """ε after ``rounds`` identical rounds — the same number :class:`PrivacyAccountant` reports for them."""
    z = _check_noise_multiplier(noise_multiplier)
    delta = _check_delta(delta)
    q = normalise_sampling_q(sampling_q)
    if rounds < 0:
        raise ConfigError("rounds", f"must be >= 0, got {rounds!r}")
    if rounds == 0 or math.isinf(z):
        return 0.0
    if z == 0.0:
        return math.inf
    if q is None:
        epsilon = float(get_epsilon_gaussian(z / math.sqrt(rounds), accounting_delta(delta)))
    else:
        base = sampled_gaussian_pld(z, q, value_discretization_interval)
        composed = base if rounds == 1 else base.self_compose(rounds)
        epsilon = float(composed.get_epsilon_for_delta(accounting_delta(delta)))
    return epsilon if tail_slack_ok(epsilon, delta, rounds) else math.inf


_Key = tuple[float, float]  # (noise multiplier used for accounting, sampling q)


class PrivacyAccountant:
    """Running (ε, δ) of a training run, composed round by round from the noise actually present.

    ``sampling_q`` is the default for rounds recorded without one (``None``: no sampling, no
    amplification). Use :meth:`would_exceed` *before* a round to stop cleanly inside the budget, and
    :meth:`record_round` *after* it with the noise the unmasked sum really carried.
    """

    def __init__(
        self,
        delta: float,
        sampling_q: float | None = None,
        *,
        value_discretization_interval: float = DEFAULT_DISCRETIZATION,
        noise_grid: float = DEFAULT_NOISE_GRID,
    ) -> None:
        self.delta = _check_delta(delta)
        self.sampling_q = normalise_sampling_q(sampling_q)
        if not 0.0 < value_discretization_interval < 1.0:
            raise ConfigError("value_discretization_interval", "must be in (0, 1)")
        if not 0.0 <= noise_grid < 0.5:
            raise ConfigError("noise_grid", "must be in [0, 0.5)")
        self._interval = float(value_discretization_interval)
        self._grid = float(noise_grid)
        self._history: list[tuple[float, float | None]] = []
        self._sampled: pld_lib.PrivacyLossDistribution | None = None  # all sampled rounds, composed
        self._pending: list[list[Any]] = []  # run-length [key, count] of sampled rounds not yet composed
        self._gaussian_rho = 0.0  # Σ z⁻² of unsampled rounds (Gaussian-DP composition)
        self._non_private = False
        self._base: dict[_Key, pld_lib.PrivacyLossDistribution] = {}
        # (key, composed PLD, its ε) computed by epsilon_if_next, reused if that round is then recorded
        self._lookahead: tuple[_Key, pld_lib.PrivacyLossDistribution, float] | None = None
        self._epsilon: float | None = 0.0

    # -- public API ---------------------------------------------------------------------------------------

    @property
    def rounds(self) -> int:
        return len(self._history)

    @property
    def history(self) -> list[tuple[float, float | None]]:
        """``(noise_multiplier, sampling_q)`` of every recorded round, for checkpoints."""
        return list(self._history)

    def record_round(
        self, noise_multiplier_effective: float, sampling_q: float | EllipsisType | None = ...
    ) -> None:
        """Compose one released round dominated by a Gaussian with multiplier ``noise_multiplier_effective``.

        For central rounds that is the Gaussian noise std over the sensitivity; for Skellam rounds the
        proven multiplier of the noise that reached the sum (``DeviceNoisePlan.noise_multiplier_present``).

        ``noise_multiplier_effective == 0`` records a non-private release (ε becomes ∞); ``inf`` records a
        release that reveals nothing.
        """
        z = _check_noise_multiplier(noise_multiplier_effective)
        q = self.sampling_q if sampling_q is ... else normalise_sampling_q(sampling_q)
        self._history.append((z, q))
        self._epsilon = None
        if math.isinf(z):
            return
        if z == 0.0:
            self._non_private = True
            logger.warning("privacy: round recorded with zero noise; epsilon is now infinite")
            return
        if q is None:
            self._gaussian_rho += 1.0 / (z * z)
            return
        key = self._key(z, q)
        if not self._pending and self._lookahead is not None and self._lookahead[0] == key:
            _key, self._sampled, self._epsilon = self._lookahead
        elif self._pending and self._pending[-1][0] == key:
            self._pending[-1][1] += 1
        else:
            self._pending.append([key, 1])
        self._lookahead = None

    def epsilon(self) -> float:
        """ε at ``delta`` of all rounds recorded so far (0.0 before the first)."""
        if self._epsilon is None:
            self._materialise()
            self._epsilon = self._epsilon_of(self._sampled, self._gaussian_rho)
        return self._epsilon

    def epsilon_if_next(
        self, noise_multiplier: float, sampling_q: float | EllipsisType | None = ...
    ) -> float:
        """ε if one more round with ``noise_multiplier`` were recorded; the state does not change."""
        z = _check_noise_multiplier(noise_multiplier)
        q = self.sampling_q if sampling_q is ... else normalise_sampling_q(sampling_q)
        if self._non_private or z == 0.0:
            return math.inf
        if math.isinf(z):
            return self.epsilon()
        self._materialise()
        if q is None:
            return self._epsilon_of(self._sampled, self._gaussian_rho + 1.0 / (z * z), self.rounds + 1)
        key = self._key(z, q)
        base = self._base_pld(key)
        composed = base if self._sampled is None else self._sampled.compose(base)
        epsilon = self._epsilon_of(composed, self._gaussian_rho, self.rounds + 1)
        self._lookahead = (key, composed, epsilon)
        return epsilon

    def would_exceed(
        self,
        budget_epsilon: float,
        next_noise_multiplier: float,
        sampling_q: float | EllipsisType | None = ...,
    ) -> bool:
        """True when running one more round with this noise would push ε above ``budget_epsilon``.

        Call it with the noise the round is *planned* with (the calibrated multiplier, assuming the
        dropout margin holds); rounds that then lose more devices than the margin are recorded with the
        lower noise they really carried, so check again before the next round.
        """
        return self.epsilon_if_next(next_noise_multiplier, sampling_q) > budget_epsilon

    @classmethod
    def from_history(
        cls, delta: float, sampling_q: float | None, history: list[tuple[float, float | None]], **kwargs: Any
    ) -> PrivacyAccountant:
        """Rebuild an accountant from :attr:`history` (aggregator restart)."""
        accountant = cls(delta, sampling_q, **kwargs)
        for z, q in history:
            accountant.record_round(z, q)
        return accountant

    # -- internals ----------------------------------------------------------------------------------------

    def _key(self, z: float, q: float) -> _Key:
        """Reuse a known multiplier in [z / (1 + grid), z]: less noise than present, so pessimistic.

        Known: cached PLDs and rounds recorded but not yet composed (whose PLDs will be built anyway).
        """
        if (z, q) in self._base:
            return (z, q)
        known = {*self._base, *(key for key, _count in self._pending)}
        candidates = [kz for kz, kq in known if kq == q and z / (1.0 + self._grid) <= kz <= z]
        return (max(candidates), q) if candidates else (z, q)

    def _base_pld(self, key: _Key) -> pld_lib.PrivacyLossDistribution:
        base = self._base.get(key)
        if base is None:
            base = sampled_gaussian_pld(key[0], key[1], self._interval)
            self._base[key] = base
        return base

    def _materialise(self) -> None:
        for key, count in self._pending:
            base = self._base_pld(key)
            block = base if count == 1 else base.self_compose(count)
            self._sampled = block if self._sampled is None else self._sampled.compose(block)
        self._pending.clear()

    def _epsilon_of(
        self, sampled: pld_lib.PrivacyLossDistribution | None, rho: float, rounds: int | None = None
    ) -> float:
        if self._non_private:
            return math.inf
        delta = accounting_delta(self.delta)
        if sampled is None:
            if rho == 0.0:
                return 0.0
            epsilon = float(get_epsilon_gaussian(1.0 / math.sqrt(rho), delta))
        else:
            if rho > 0.0:
                gaussian = pld_lib.from_gaussian_mechanism(
                    standard_deviation=1.0 / math.sqrt(rho), value_discretization_interval=self._interval
                )
                sampled = sampled.compose(gaussian)
            epsilon = float(sampled.get_epsilon_for_delta(delta))
        if not tail_slack_ok(epsilon, self.delta, self.rounds if rounds is None else rounds):
            logger.warning("privacy: epsilon %.4g is beyond what the reserved delta covers; inf", epsilon)
            return math.inf
        return epsilon
