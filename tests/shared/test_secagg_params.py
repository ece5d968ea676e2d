"""SecAgg+ parameters: privacy floor, full graph for small n, dropout tolerance by simulation."""

from __future__ import annotations

import random

import pytest

from shared.errors import ConfigError
from shared.secagg.graph import neighbour_graph, round_recoverable
from shared.secagg.params import FULL_GRAPH_MAX_N, choose_params, hypergeom_tail


def completion_rate(n: int, dropout: float, trials: int, delta: float = 0.2, gamma: float = 0.1) -> float:
    """Share of seeded rounds recoverable when ``dropout * n`` devices vanish after the share phase.

    Crypto is not modelled: a round completes iff every survivor and every dropped device with a
    surviving neighbour keeps >= t surviving neighbours (graph.round_recoverable).
    """
    params = choose_params(n, delta, gamma)
    ids = [f"dev-{i:03d}" for i in range(n)]
    completed = 0
    for trial in range(trials):
        rng = random.Random(trial)
        graph = neighbour_graph(ids, params.k, rng.randbytes(32))
        survivors = set(rng.sample(ids, n - round(dropout * n)))
        completed += round_recoverable(graph, params.t, ids, survivors)
    return completed / trials


def test_rounds_complete_at_20_percent_dropout_n100() -> None:
    params = choose_params(100)
    assert not params.full_graph and params.k > 15  # sparse, and wider than Flower's default
    assert completion_rate(100, 0.2, trials=300) >= 0.99


@pytest.mark.parametrize("n", [3, 5, 10, 40, 41, 60, 100, 250, 1000])
@pytest.mark.parametrize(("delta", "gamma"), [(0.2, 0.1), (0.1, 0.0), (0.3, 0.05)])
def test_threshold_is_above_half_the_degree(n: int, delta: float, gamma: float) -> None:
    params = choose_params(n, delta, gamma)
    assert 2 * params.t > params.k >= params.t >= 2
    assert params.full_graph == (params.k == n - 1)
    if n <= FULL_GRAPH_MAX_N:
        assert params.full_graph
    else:
        assert params.k % 2 == 0 or params.full_graph


def test_sparse_degree_grows_slowly_with_n() -> None:
    ks = [choose_params(n, 0.1, 0.0).k for n in (100, 1000, 10_000)]
    assert ks == sorted(ks) and ks[-1] < 200


def test_hypergeometric_tail_matches_brute_force() -> None:
    assert hypergeom_tail(10, 3, 4, 0) == 1.0
    assert hypergeom_tail(10, 3, 4, 4) == 0.0
    # P[X >= 2] for 3 marked of 10, 4 draws = (C(3,2)C(7,2) + C(3,3)C(7,1)) / C(10,4)
    assert hypergeom_tail(10, 3, 4, 2) == pytest.approx((3 * 21 + 7) / 210)


def test_impossible_parameters_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        choose_params(2)
    with pytest.raises(ConfigError):
        choose_params(4, gamma=0.9)
