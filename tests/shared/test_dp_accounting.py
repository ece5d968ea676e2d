"""The accountant must reproduce dp-accounting's own numbers and stop a run before the budget is crossed."""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from shared.dp.accounting import PrivacyAccountant, epsilon_for_constant_noise
from shared.errors import ConfigError


def _reference_sampled(z: float, q: float, rounds: int, delta: float) -> float:
    accountant = dpa.pld.PLDAccountant()
    accountant.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds))
    return accountant.get_epsilon(delta)


def test_matches_dp_accounting_q001_z1_t500() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.01)
    for _ in range(500):
        accountant.record_round(1.0)
    epsilon = accountant.epsilon()
    reference = _reference_sampled(1.0, 0.01, 500, 1e-5)
    assert epsilon == pytest.approx(reference, rel=1e-6)
    assert 0.3 < epsilon < 2.0  # sanity: published values for this setting are ~1.3
    assert accountant.rounds == 500


def test_incremental_with_lookahead_matches_self_composition() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.02)
    for _ in range(40):
        accountant.epsilon_if_next(1.2)
        accountant.record_round(1.2)
        accountant.epsilon()
    assert accountant.epsilon() == pytest.approx(_reference_sampled(1.2, 0.02, 40, 1e-5), rel=1e-6)


def test_without_sampling_no_amplification_and_exact_gaussian_composition() -> None:
    for sampling_q in (None, 1.0):
        accountant = PrivacyAccountant(1e-5, sampling_q=sampling_q)
        for _ in range(20):
            accountant.record_round(5.0)
        exact = dpa.get_epsilon_gaussian(5.0 / math.sqrt(20), 1e-5)
        assert accountant.epsilon() == pytest.approx(exact, rel=1e-9)
        pld = dpa.pld.PLDAccountant()
        pld.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(5.0), 20))
        assert accountant.epsilon() <= pld.get_epsilon(1e-5) <= accountant.epsilon() * 1.01
    sampled = PrivacyAccountant(1e-5, sampling_q=0.1)
    for _ in range(20):
        sampled.record_round(5.0)
    assert sampled.epsilon() < accountant.epsilon()  # amplification only with sampling


def test_rounds_with_different_noise_compose() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.05, noise_grid=0.0)
    schedule = [1.0, 1.3, 0.9, 1.3]
    for z in schedule:
        accountant.record_round(z)
    reference = dpa.pld.PLDAccountant()
    reference.compose(
        dpa.ComposedDpEvent([dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(z)) for z in schedule])
    )
    assert accountant.epsilon() == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)
    # With the default grid, a multiplier just above a cached one reuses the smaller: never optimistic.
    gridded = PrivacyAccountant(1e-5, sampling_q=0.05)
    for z in [1.0, 1.005, 1.005]:
        gridded.record_round(z)
    exact = PrivacyAccountant(1e-5, sampling_q=0.05, noise_grid=0.0)
    for z in [1.0, 1.005, 1.005]:
        exact.record_round(z)
    assert exact.epsilon() <= gridded.epsilon() <= exact.epsilon() * 1.02


def test_mixed_sampled_and_unsampled_rounds() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.05, noise_grid=0.0)
    accountant.record_round(1.0)
    accountant.record_round(8.0, None)
    reference = dpa.pld.PLDAccountant()
    reference.compose(
        dpa.ComposedDpEvent(
            [dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.0)), dpa.GaussianDpEvent(8.0)]
        )
    )
    assert accountant.epsilon() == pytest.approx(reference.get_epsilon(1e-5), rel=1e-4)


def test_zero_noise_is_infinite_and_bad_input_rejected() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.01)
    assert accountant.epsilon() == 0.0
    assert math.isinf(accountant.epsilon_if_next(0.0))
    accountant.record_round(0.0)
    assert math.isinf(accountant.epsilon())
    with pytest.raises(ConfigError) as error:
        PrivacyAccountant(0.0)
    assert error.value.field == "delta"
    with pytest.raises(ConfigError) as error:
        PrivacyAccountant(1e-5, sampling_q=1.5)
    assert error.value.field == "sampling_q"
    with pytest.raises(ConfigError) as error:
        accountant.record_round(-1.0)
    assert error.value.field == "noise_multiplier"


def test_budget_stop_at_the_brute_force_round() -> None:
    z, q, delta, budget, interval = 1.5, 0.05, 1e-5, 1.0, 1e-3
    # Brute force with dp-accounting alone: compose one round at a time until ε exceeds the budget.
    base = pld_lib.from_gaussian_mechanism(z, sampling_prob=q, value_discretization_interval=interval)
    composed, first_over = base, 1
    while composed.get_epsilon_for_delta(delta) <= budget:
        composed = composed.compose(base)
        first_over += 1
    # The accountant-driven loop must run exactly the rounds before that one, and no more.
    accountant = PrivacyAccountant(delta, sampling_q=q, value_discretization_interval=interval)
    while not accountant.would_exceed(budget, z):
        accountant.record_round(z)
    assert accountant.rounds == first_over - 1
    assert accountant.epsilon() <= budget < accountant.epsilon_if_next(z)
    assert 10 < first_over < 500  # the setting is not degenerate


def test_from_history_restores_the_same_epsilon() -> None:
    accountant = PrivacyAccountant(1e-5, sampling_q=0.01)
    for z in (1.0, 1.1, 1.0):
        accountant.record_round(z)
    restored = PrivacyAccountant.from_history(1e-5, 0.01, accountant.history)
    assert restored.epsilon() == pytest.approx(accountant.epsilon(), rel=1e-12)
    assert epsilon_for_constant_noise(1.0, 0, 1e-5, 0.01) == 0.0
