"""Choosing the neighbour degree k and the Shamir threshold t (SecAgg+, Bell et al. CCS 2020).

Model (Bell et al. §3-4, Thm. 3.2/4.x; Bonawitz et al. §4): n devices, at most a fraction ``gamma`` of
them corrupt and colluding with the aggregator, at most a fraction ``delta`` dropping out after the
share phase. Each device's k neighbours are a random k-subset of the other n-1 devices.

Two events must be rare:

* **privacy breach** for an honest device u: the aggregator learns u's input only if it rebuilds *both*
  u's self-mask seed and u's mask key. Honest neighbours reveal at most one of the two (never both),
  corrupt neighbours reveal both. With c corrupt neighbours it needs ``t - c`` honest shares of each
  kind, ``2(t - c) <= k - c``. So u is safe whenever ``c < 2t - k``, i.e. ``t > (k + c) / 2``. This is
  Bonawitz et al.'s ``t > (n + n_corrupt)/2`` bound applied to a neighbourhood; it holds even if the
  aggregator equivocates about who dropped out, because the "never both" rule is enforced by each
  honest holder locally.
* **round failure**: a survivor with fewer than t surviving neighbours cannot have its self mask
  removed (and a dropped device's pair masks likewise), i.e. ``k - dropped_neighbours < t``.

With C = ceil(gamma n) corrupt and D = ceil(delta n) dropped devices, the number of corrupt (dropped)
neighbours of a device is hypergeometric Hyp(N = n - 1, K = C (D), draws = k). We take the union bound
over the n devices and require

    n * P[Hyp(n-1, C, k) >= 2t - k] <= 2^-security_bits      (privacy, default 40 bits)
    n * P[Hyp(n-1, D, k) >  k - t]  <= 2^-correctness_bits   (completion, default 20 bits)

and pick the smallest even k for which some t satisfies both, with t the smallest such (which maximises
dropout tolerance). This is the computation behind Bell et al.'s k = O(log n + sigma) (their Table 1
uses the same two tail conditions with sigma = 40, eta = 30; we default eta = 20 because a failed round
here only means "retry", not a privacy loss). It needs ``2 delta + gamma < 1`` asymptotically.

Small rounds (``n <= FULL_GRAPH_MAX_N`` or when the sparse search reaches k >= n - 1) use the complete
graph, where the bounds are deterministic: ``t = floor((n - 1 + C) / 2) + 1`` (privacy against every
placement of the C corrupt devices). Every survivor then needs t surviving neighbours, so the round
tolerates ``n - 1 - t`` dropouts; when that is below ``ceil(delta n)`` (tiny n) privacy wins and the
round simply tolerates fewer dropouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import ConfigError

FULL_GRAPH_MAX_N = 40


@dataclass(frozen=True)
class SecAggParams:
    """Neighbour degree ``k`` and Shamir threshold ``t`` for a round of ``n`` devices."""

    n: int
    k: int
    t: int
    delta: float
    gamma: float
    security_bits: int
    correctness_bits: int

    @property
    def full_graph(self) -> bool:
        return self.k >= self.n - 1

    @property
    def tolerated_dropouts(self) -> int:
        """Dropped neighbours a device's neighbourhood can lose and still be unmasked: ``k - t``.

        In the full graph this is the number of devices the whole round can lose (after the share phase)
        beyond the one being recovered, so it may be below ``ceil(delta n)`` for very small ``n``.
        """
        return self.k - self.t


def hypergeom_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ Hypergeometric(population, marked, draws), exactly (big-int combs)."""
    if at_least <= 0:
        return 1.0
    top = min(marked, draws)
    if at_least > top:
        return 0.0
    total = math.comb(population, draws)
    hits = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i) for i in range(at_least, top + 1)
    )
    return hits / total


def _full_graph(
    n: int, delta: float, gamma: float, security_bits: int, correctness_bits: int
) -> SecAggParams:
    corrupt = math.ceil(gamma * n)
    t = (n - 1 + corrupt) // 2 + 1
    if t > n - 1:
        raise ConfigError(
            "secagg.gamma",
            f"with n={n} devices and gamma={gamma} ({corrupt} corrupt) no threshold protects privacy; "
            "add devices or lower gamma",
        )
    # Privacy is not negotiable; dropout tolerance is what gives way when n is small: the round then
    # tolerates n - 1 - t dropouts instead of ceil(delta n) (see SecAggParams.tolerated_dropouts).
    return SecAggParams(n, n - 1, t, delta, gamma, security_bits, correctness_bits)


def choose_params(
    n: int,
    delta: float = 0.2,
    gamma: float = 0.1,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> SecAggParams:
    """Smallest safe (k, t) for ``n`` devices; see the module docstring for the formulas."""
    if n < 3:
        raise ConfigError("secagg.n", f"secure aggregation needs at least 3 devices, got {n}")
    if not 0 <= delta < 1 or not 0 <= gamma < 1:
        raise ConfigError("secagg", f"delta and gamma must be in [0, 1), got {delta}, {gamma}")
    if n <= FULL_GRAPH_MAX_N:
        return _full_graph(n, delta, gamma, security_bits, correctness_bits)
    corrupt = math.ceil(gamma * n)
    dropped = math.ceil(delta * n)
    privacy_budget = 2.0**-security_bits / n
    failure_budget = 2.0**-correctness_bits / n
    for k in range(2, n - 1, 2):
        # smallest t with the privacy bound: c >= 2t - k must be rare
        t_low = next(
            (
                t
                for t in range(k // 2 + 1, k + 1)
                if hypergeom_tail(n - 1, corrupt, k, 2 * t - k) <= privacy_budget
            ),
            None,
        )
        if t_low is None:
            continue
        if hypergeom_tail(n - 1, dropped, k, k - t_low + 1) <= failure_budget:
            return SecAggParams(n, k, t_low, delta, gamma, security_bits, correctness_bits)
    return _full_graph(n, delta, gamma, security_bits, correctness_bits)
