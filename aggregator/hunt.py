"""Finding the device behind refused aggregates across rounds, by adaptive cohorts (group testing).

Under secure aggregation the aggregator sees one sum per round, never an input, so when a sum is beyond
what clipped inputs can produce (``shared.influence``) it knows only that *someone among the round's
contributors* misbehaved. One refused sum names nobody; several do, if the cohorts are chosen well:

* **Evidence** is the contributor set of every refused round (the devices whose inputs are in that
  sum). It is sound whatever the rogue does: a refused sum always contains a misbehaving input,
  because honest (clipped) inputs cannot produce one (the bound has the quantisation and noise slack).
* **Naming** (:meth:`Hunt.refused`): with at most ``tolerated`` misbehaving devices, every set of
  ``<= tolerated`` devices that meets every refused set (a *hitting set*) could be the culprits; a
  device in *all* of them is certainly one. With ``tolerated = 1`` this is "the refused sets
  intersect in exactly one device". Passed rounds are never used to name anyone: an adaptive rogue
  may behave in any round it likes, so a passed round proves nothing about its members.
* **Cohorts** (:meth:`Hunt.plan`): while evidence is open, the candidates ``C`` are the devices in
  every refused set. The next round admits every non-candidate and only a test share ``T`` of ``C``
  (a quarter by default, topped up so the round still reaches its minimum cohort), leaving ``C - T``
  out. If that round's sum is refused, the candidates shrink to ``T``; if it passes, ``T`` is marked
  probed and the next test is drawn from the unprobed rest. Each refused round shrinks ``C`` to the
  test share (while the minimum cohort allows), so a rogue can spoil only about ``log(n) / log(1 /
  share) + 2`` rounds before it is named, however rarely it attacks, and it can only avoid being
  named by not attacking -- which is the goal (``benchmarks/hunt.py`` measures it).

Privacy: this is ordinary cohort selection. Each round still reveals one sum of at least
``min_clients`` inputs under SecAgg+; the aggregator only chooses *who may join*, as over-selection and
quarantine already do (docs/security.md, "Updates beyond the clip"). Like every selection it can be
abused by a malicious aggregator to isolate a device; that needs ``min_clients`` sybils, which the
secure minimum cohort already assumes away.

Pure policy: no I/O, no clock; randomness only from the ``rng`` given. The engine
(:class:`aggregator.secure.SecureRound`) asks :meth:`plan` who sits out, and reports each round's
outcome with :meth:`refused` or :meth:`passed`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from aggregator.config import AggregatorConfig
from shared.offences import Offences
from shared.quarantine import Quarantine

log = logging.getLogger("aggregator.engine")

#: The offence rule a device named by the hunt is counted (and quarantined) under.
BEYOND_CLIP = "influence-beyond-clip"


@dataclass
class Hunt:
    """Evidence and cohort policy across rounds (see the module docstring)."""

    #: Most devices assumed to misbehave at once; naming is sound up to this many (1 or 2 is practical).
    tolerated: int = 1
    #: Refused sets kept (oldest dropped: fewer constraints never make naming unsound).
    max_evidence: int = 64
    #: Share of the candidates tested per round. A refused test shrinks the candidates to this share, a
    #: passed one probes it: 1/2 names in the fewest rounds; smaller shares spoil fewer rounds (about
    #: log(n) / log(1 / share) refused) but take a few more (passed) rounds to name (benchmarks/hunt.py).
    test_share: float = 0.25
    #: Passed rounds in a row after which open evidence is dropped (the rogue stopped, or left the
    #: fleet): the hunt's cohorts leave honest devices out too, so it must not last forever.
    patience: int = 50
    rng: random.Random = field(default_factory=random.Random)
    evidence: list[frozenset[str]] = field(default_factory=list)
    #: Candidates that were in a passed round since the last refusal (guidance only, never evidence).
    probed: set[str] = field(default_factory=set)
    #: Devices the hunt named so far, by round (tested first should they come back and sums fail again).
    named: dict[str, int] = field(default_factory=dict)
    #: Rounds a device counts as present after it last asked to join one (dropouts come back).
    memory: int = 3
    #: When each device last asked to join a round (in reports: :meth:`passed`/:meth:`refused` calls).
    seen: dict[str, int] = field(default_factory=dict)
    reports: int = 0
    #: The test half of the current plan (for logs and tests).
    testing: frozenset[str] = frozenset()
    #: Passed rounds since the last refusal (while evidence is open).
    quiet: int = 0
    #: Devices added to the minimum cohort after restricted rounds that fell short of it (:meth:`short`).
    padding: int = 0

    def __post_init__(self) -> None:
        if self.tolerated < 1:
            raise ValueError("tolerated must be >= 1")
        if not 0 < self.test_share <= 0.5:
            raise ValueError("test_share must be in (0, 0.5]")

    @property
    def present(self) -> frozenset[str]:
        """Devices that asked to join one of the last ``memory`` rounds (the next cohort is sized from
        them: one round's roll call undercounts a fleet whose devices miss rounds now and then)."""
        return frozenset(d for d, r in self.seen.items() if self.reports - r < self.memory)

    def _saw(self, contributors: Collection[str], present: Collection[str]) -> None:
        self.reports += 1
        for device in (*present, *contributors):
            self.seen[device] = self.reports
        if len(self.seen) > 4 * len(self.present) + 1024:  # forget devices long gone
            self.seen = {d: r for d, r in self.seen.items() if self.reports - r < self.memory}

    @property
    def active(self) -> bool:
        """Whether unexplained refused sums are open (cohorts are then restricted)."""
        return bool(self.evidence)

    def candidates(self) -> frozenset[str]:
        """Devices in every refused set; with several culprits possibly none: then the latest set."""
        if not self.evidence:
            return frozenset()
        common = frozenset.intersection(*self.evidence)
        return common or self.evidence[-1]

    # -- cohort selection ------------------------------------------------------------------------

    def plan(self, min_cohort: int) -> frozenset[str]:
        """The devices that sit out the next round (empty: no restriction).

        ``min_cohort`` is the round's minimum number of inputs: the present non-candidates plus the
        test half must reach it, or the test half grows (and a split that cannot leave anyone out is
        not made: the round runs unrestricted, and the evidence waits for a larger population).
        """
        self.testing = frozenset()
        if not self.evidence:
            return frozenset()
        cand = self.candidates()
        if len(cand) <= 1:
            return frozenset()
        pool = [d for d in self._ordered(cand) if d not in self.probed]
        if not pool:  # every candidate passed a test: the rogue behaved when tested; start over
            self.probed.clear()
            pool = self._ordered(cand)
        others = len(self.present - cand)
        # A candidate named before is tested alone (with the least padding): one refusal names it again.
        share = 0.0 if any(d in self.named for d in cand) else self.test_share
        size = max(math.ceil(len(pool) * share), min_cohort + self.padding - others, 1)
        if size >= len(cand):
            return frozenset()
        rest = [d for d in self._ordered(cand) if d not in pool]
        test = (pool + rest)[:size]
        self.testing = frozenset(test)
        return cand - self.testing

    def _ordered(self, devices: Iterable[str]) -> list[str]:
        """Earlier offenders first (one refusal with them alone names them again), then present devices
        (an absent one tests nothing), each group in random order."""
        ordered = sorted(devices)
        self.rng.shuffle(ordered)
        return sorted(ordered, key=lambda d: (d not in self.named, d not in self.present))

    # -- outcomes --------------------------------------------------------------------------------

    def short(self) -> None:
        """A restricted round was abandoned for too few devices: test more of them from now on."""
        self.padding += 1
        log.warning("hunt: a restricted round fell short of its minimum; %d more devices per test",
                    self.padding)  # fmt: skip

    def passed(self, contributors: Collection[str], present: Collection[str] = ()) -> None:
        """A round's sum was within its bound: its candidates count as probed (guidance only)."""
        self._saw(contributors, present)
        if self.evidence:
            self.probed |= set(contributors) & self.candidates()
            self.quiet += 1
            if self.quiet >= self.patience:
                log.warning("hunt: %d rounds passed since the last refused aggregate; evidence dropped",
                            self.quiet)  # fmt: skip
                self.evidence.clear()
                self.probed.clear()

    def refused(self, contributors: Collection[str], present: Collection[str] = ()) -> list[str]:
        """A round's sum was refused: add its contributors as evidence; return the devices now named.

        A named device's refused sets are explained by it and dropped; the rest stay open.
        """
        self._saw(contributors, present)
        if not contributors:
            return []
        self.evidence.append(frozenset(contributors))
        del self.evidence[: -self.max_evidence]
        self.probed.clear()
        self.quiet = 0
        if not hitting_set_exists(self.evidence, self.tolerated):
            # More culprits than tolerated (or evidence from before a change of fleet): start afresh
            # from this refusal rather than name anyone on inconsistent evidence.
            self.evidence = [frozenset(contributors)]
        named = essential(self.evidence, self.tolerated)
        for device in named:
            self.named[device] = self.named.get(device, 0) + 1
        if named:
            self.evidence = [s for s in self.evidence if not s & set(named)]
            self.padding = 0
        return named

    def forget(self, device: str) -> None:
        """An operator cleared ``device`` (or it left the fleet): it no longer counts in the evidence."""
        self.named.pop(device, None)


def hitting_set_exists(sets: Sequence[frozenset[str]], k: int, avoid: str | None = None) -> bool:
    """Whether at most ``k`` devices other than ``avoid`` meet every set of ``sets``.

    Branches on the smallest unmet set (any hitting set holds one of its members): at most ``s^k``
    leaves for sets of size ``s``, small for the ``k <= 2`` a fleet tolerates in practice.
    """
    pending = [s - {avoid} if avoid is not None else s for s in sets]
    if not pending:
        return True
    if k <= 0 or any(not s for s in pending):
        return False
    if k == 1:  # one device in every set
        return bool(frozenset.intersection(*pending))
    smallest = min(pending, key=len)
    for device in sorted(smallest):
        rest = [s for s in pending if device not in s]
        if hitting_set_exists(rest, k - 1):
            return True
    return False


def essential(sets: Sequence[frozenset[str]], k: int) -> list[str]:
    """Devices in every hitting set of size ``<= k`` (the certainly-misbehaving ones); sorted.

    Only members of the smallest set can be essential (a hitting set must take one of them).
    """
    if not sets or not hitting_set_exists(sets, k):
        return []
    if k == 1:  # the intersection is not empty here; one member is certain only if it is alone
        common = frozenset.intersection(*sets)
        return sorted(common) if len(common) == 1 else []
    smallest = min(sets, key=len)
    return sorted(d for d in smallest if not hitting_set_exists(sets, k, avoid=d))


def admission(
    hunt: Hunt | None,
    *,
    quarantine: Quarantine,
    config: AggregatorConfig,
    directory: Collection[str],
    admit: int,
) -> tuple[frozenset[str], int]:
    """For a secure round: the suspects that sit it out (:meth:`Hunt.plan`, with cohorts sized so the
    round still reaches ``min_clients`` after the dropouts the graph tolerates), and how many adverts the
    keys phase waits for (it need not wait for devices that cannot join: left out, or quarantined)."""
    cohort = math.ceil(config.min_clients / (1 - config.dropout_rate))
    sat_out = hunt.plan(cohort) if hunt is not None else frozenset()
    away = sat_out | {d for d in quarantine.blocked() if d in directory}
    if sat_out and hunt is not None:
        log.info("hunt: %d suspects sit this round out, %d tested", len(sat_out), len(hunt.testing))
    return sat_out, max(1, min(admit, len(directory) - len(away)))


def settle(
    hunt: Hunt,
    offences: Offences,
    *,
    round_id: int,
    contributors: Collection[str],
    present: Collection[str],
    refused: str | None,
) -> list[str]:
    """Report a round's outcome (``refused``: why its sum was refused; None: it passed) to ``hunt``;
    name and count (hence quarantine) any device the evidence now proves, under :data:`BEYOND_CLIP`."""
    if refused is None:
        hunt.passed(contributors, present)
        return []
    named = hunt.refused(contributors, present)
    for device in named:
        offences.record(
            device, BEYOND_CLIP,
            f"in every refused aggregate of the hunt (at most {hunt.tolerated} misbehaving assumed); "
            f"last: {refused}",
            context=f"round={round_id}",
        )  # fmt: skip
    if not named:
        log.warning(
            "round=%d aggregate refused; %d suspects left (%d refused rounds of evidence)",
            round_id, len(hunt.candidates()), len(hunt.evidence),
        )  # fmt: skip
    return named
