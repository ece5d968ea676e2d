"""Unmask feasibility is checked when a phase closes, per the graph's real needs (issue 14, part 3).

With exactly t survivors in the complete graph every survivor has only t - 1 surviving neighbours and
refuses to reveal, so such a round must be abandoned when the masked phase closes, not one unmask window
later; likewise a share phase whose members cannot each find t sharing neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.secagg import RoundAbandoned, SecAggClient, SecAggServer, generate_identity
from shared.secagg.graph import round_recoverable, threshold_core, unmask_obstacle
from shared.secagg.params import SecAggParams

FED = "fed-feasible"
BITS, LENGTH = 16, 8


def make_round(n: int, params: SecAggParams | None = None):
    aggregator = generate_identity()
    identities = {f"dev-{i:02d}": generate_identity() for i in range(n)}
    directory = {d: bytes(k.verify_key) for d, k in identities.items()}
    clients = {
        d: SecAggClient(FED, d, k, bytes(aggregator.verify_key), directory) for d, k in identities.items()
    }
    server = SecAggServer(FED, 1, aggregator, directory, BITS, LENGTH, params=params)
    for client in clients.values():
        server.add_advert(client.advertise(1))
    roster = server.make_roster()
    return server, clients, roster


def share(server, clients, roster, who) -> None:
    for d in who:
        for bundle in clients[d].on_roster(roster):
            server.add_shares(bundle)


def mask(server, clients, shared, who, inputs) -> None:
    for d in who:
        for bundle in server.shares_for(d):
            clients[d].on_shares(bundle)
        y = clients[d].mask(inputs[d], shared)
        server.add_masked(clients[d].masked_input(y.astype("<u4").tobytes()))


def test_exactly_t_masked_inputs_in_the_complete_graph_abandon_at_the_masked_close():
    server, clients, roster = make_round(6)
    t = roster.threshold
    assert roster.degree == 5 and 1 < t < 6  # complete graph
    share(server, clients, roster, clients)
    shared = server.close_share_phase()
    rng = np.random.default_rng(0)
    inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in clients}
    survivors = sorted(clients)[:t]
    mask(server, clients, shared, survivors, inputs)
    assert server.unmask_obstacle() is not None
    with pytest.raises(RoundAbandoned, match="surviving neighbours"):
        server.close_masked_phase()
    # The devices would indeed have refused: the check matches the clients' own rule.
    assert not round_recoverable(server.graph, t, server.shared, survivors)


def test_t_plus_one_masked_inputs_close_and_unmask_exactly():
    server, clients, roster = make_round(6)
    t = roster.threshold
    share(server, clients, roster, clients)
    shared = server.close_share_phase()
    rng = np.random.default_rng(1)
    inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in clients}
    survivors = sorted(clients)[: t + 1]
    mask(server, clients, shared, survivors, inputs)
    assert server.unmask_obstacle() is None
    u3 = server.close_masked_phase()
    for d in u3.devices:
        server.add_reveal(clients[d].on_survivors(u3))
    total = server.unmask()
    expected = sum(inputs[d].astype(np.uint64) for d in survivors) % (1 << BITS)
    np.testing.assert_array_equal(total, expected.astype(np.uint32))


def test_share_phase_with_exactly_t_sharers_in_the_complete_graph_abandons_at_its_close():
    server, clients, roster = make_round(6)
    t = roster.threshold
    share(server, clients, roster, sorted(clients)[:t])
    with pytest.raises(RoundAbandoned, match="neighbours"):
        server.close_share_phase()


@pytest.mark.parametrize("seed", range(6))
def test_u2_is_the_threshold_core_so_nobody_masks_with_a_device_bound_to_refuse(seed):
    # A sparse ring (k = 4, t = 3) of 10 with 1-3 devices that never share.
    params = SecAggParams(10, 4, 3, 0.2, 0.0, 40, 20)
    server, clients, roster = make_round(10, params)
    graph = server.graph
    rng = np.random.default_rng(seed)
    missing = set(rng.choice(sorted(clients), size=1 + seed % 3, replace=False).tolist())
    sharers = [d for d in sorted(clients) if d not in missing]
    share(server, clients, roster, sharers)
    # Without the core, U2 = the sharers: those with < t sharing neighbours refuse to mask and the rest
    # must rebuild their keys. Whenever that could have unmasked, the core round must not abandon.
    refusers = {u for u in sharers if sum(v in sharers for v in graph[u]) < 3}
    old_ok = round_recoverable(graph, 3, sharers, set(sharers) - refusers)
    try:
        shared = server.close_share_phase()
    except RoundAbandoned:
        assert not old_ok
        return
    core = threshold_core(graph, 3, sharers)
    assert set(shared.devices) == core
    assert all(sum(v in core for v in graph[u]) >= 3 for u in core)
    # Everyone in the notice masks (none refuses for lack of neighbours) and the round unmasks exactly.
    inputs = {d: rng.integers(0, 1 << BITS, LENGTH).astype(np.uint32) for d in clients}
    mask(server, clients, shared, shared.devices, inputs)
    u3 = server.close_masked_phase()
    for d in u3.devices:
        server.add_reveal(clients[d].on_survivors(u3))
    expected = sum(inputs[d].astype(np.uint64) for d in u3.devices) % (1 << BITS)
    np.testing.assert_array_equal(server.unmask(), expected.astype(np.uint32))


def test_threshold_core_peels_repeatedly():
    # A path a-b-c-d plus a triangle c-d-e: with t = 2, a (1 neighbour) goes, then b (only c left).
    graph = {
        "a": ("b",),
        "b": ("a", "c"),
        "c": ("b", "d", "e"),
        "d": ("c", "e"),
        "e": ("c", "d"),
    }
    assert threshold_core(graph, 2, "abcde") == frozenset("cde")
    assert threshold_core(graph, 2, "abcd") == frozenset()


def test_obstacle_names_the_starved_device():
    graph = {"a": ("b", "c"), "b": ("a", "c"), "c": ("a", "b")}
    assert unmask_obstacle(graph, 2, "abc", "abc") is None
    reason = unmask_obstacle(graph, 2, "abc", "ab")
    assert reason is not None and "'a'" in reason and "1 surviving" in reason
    assert threshold_core(graph, 2, "ab") == frozenset()
