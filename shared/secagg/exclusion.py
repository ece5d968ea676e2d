"""Self-healing SecAgg+: a dealer nobody can rebuild is taken out of the round instead of ending it.

Three cases leave the aggregator with a dealer whose secret cannot be rebuilt (docs/security.md, "Hostile
devices", has the rules and their proof sketches):

* **refused bundles** - each device reports, in its signed masked input, the neighbours whose bundles it
  refused. At the masked close a dealer with fewer than t neighbours that masked *and* did not refuse it
  is excluded: its input is subtracted from the running sum and it is left out of U3, so its neighbours
  treat it as dropped and reveal no share of its self mask;
* **unrebuildable survivor** - a survivor whose self mask no t revealed shares rebuild: if nobody revealed
  a share of it (they all refused its bundles) it is excluded like the above; if its shares match its
  signed digests but do not rebuild its commitment, it is excluded with an inconsistency proof
  (:mod:`shared.secagg.proofs`);
* **unrebuildable dropped key** - a dropped dealer whose mask key does not rebuild.

An excluded dealer's pairwise masks are still inside its surviving neighbours' inputs: they are removed
with the pair seeds those neighbours reveal on a signed :class:`~shared.wire.seeds.SeedRequest`. To
subtract an input after the fact the aggregator keeps each summed masked input's packed payload (up to
:data:`KEEP_BYTES` per round; beyond 16 MiB on disk, :mod:`shared.secagg.kept`); an input it could not
keep is never excluded (the round is then abandoned as before, naming the dealer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import SecAggError
from shared.offences import Offences
from shared.secagg import keys, proofs
from shared.secagg.attribution import BUNDLES_REFUSED
from shared.secagg.kept import KeptInputs
from shared.wire.secagg import MaskedInput, digests_signed_bytes
from shared.wire.seeds import InconsistencyProof, SeedRequest, SeedReveal

if TYPE_CHECKING:
    from shared.secagg.server import SecAggServer

log = logging.getLogger(__name__)

#: Packed masked payloads kept per round so an excluded dealer's input can be subtracted from the sum.
KEEP_BYTES = 512 * 1024 * 1024


class Exclusion:
    """One round's refusal reports, kept inputs, signed digests, excluded dealers and revealed seeds."""

    def __init__(self, federation: str, round_id: int, offences: Offences) -> None:
        self.federation = federation
        self.round_id = round_id
        self.offences = offences
        self.refusals: dict[str, set[str]] = {}
        self.kept = KeptInputs()
        self._kept_bytes = 0
        self.signed_digests: dict[str, tuple[dict[str, bytes], bytes]] = {}
        #: Dealers whose pair seeds are needed (a proof where neighbours revealed its self-mask shares).
        self.dealers: dict[str, InconsistencyProof | None] = {}
        self.seeds: dict[str, dict[str, bytes]] = {}
        self.revealed_seeds: set[str] = set()
        self.secrets: dict[str, bytes] = {}  # rebuilt self-mask seeds and mask keys
        self.request: SeedRequest | None = None
        self.prepared = False
        self._context = f"round={round_id}"

    # -- intake ----------------------------------------------------------------------------------
    def note_digests(
        self, dealer: str, digests: dict[str, bytes], signature: bytes, *, neighbours: Collection[str],
        identity: bytes,
    ) -> bool:  # fmt: skip
        """Keep a dealer's signature over its digests when it covers exactly its neighbours and holds."""
        if not signature or set(digests) != set(neighbours):
            return False
        try:
            keys.verify(identity, digests_signed_bytes(self.federation, self.round_id, dealer, digests),
                        signature, f"digests of {dealer!r}")  # fmt: skip
        except SecAggError:
            return False
        self.signed_digests.setdefault(dealer, (dict(digests), bytes(signature)))
        return True

    def note_masked(self, message: MaskedInput, neighbours: Collection[str]) -> None:
        """Record the device's refusal report (neighbours only) and keep its payload within budget."""
        for dealer in message.refused:
            if dealer in neighbours:
                self.refusals.setdefault(dealer, set()).add(message.device)
        if self._kept_bytes + len(message.payload) <= KEEP_BYTES:
            self.kept.add(message)
            self._kept_bytes += len(message.payload)
        elif not self._kept_bytes > KEEP_BYTES:
            self._kept_bytes = KEEP_BYTES + 1  # log once per round
            log.warning("secagg round=%s: masked inputs beyond %d bytes are not kept; a dealer among them "
                        "cannot be excluded", self.round_id, KEEP_BYTES)  # fmt: skip

    def refused_dealers(
        self, graph: Mapping[str, tuple[str, ...]], survivors: frozenset[str], threshold: int
    ) -> frozenset[str]:
        """Dealers among ``survivors`` with fewer than t surviving neighbours that did not refuse them.

        Named ``secagg-bundles-refused`` (which quarantines) only when more than k - t neighbours refused
        it: no k - t liars can get an honest dealer named, and fewer than that exclude it only together
        with dropouts that would have cost its self mask anyway.
        """
        out: set[str] = set()
        while True:  # an excluded device neither holds shares nor reveals: repeat until nothing changes
            alive = survivors - out
            short = {d for d in alive if self._short(d, graph[d], alive, threshold)}
            if not short:
                break
            out |= short
        for dealer in sorted(out):
            refusers = self.refusals[dealer] & (survivors - out)
            neighbours = graph[dealer]
            self.dealers[dealer] = None
            reason = f"{len(refusers)} of {len(neighbours)} neighbours refused its share bundles"
            if len(refusers) > len(neighbours) - threshold:
                self.offences.record(dealer, BUNDLES_REFUSED, reason, context=self._context)
            log.warning("secagg round=%s: %s excluded from the sum: %s", self.round_id, dealer, reason)
        return frozenset(out)

    def _short(self, dealer: str, neighbours: Collection[str], alive: frozenset[str], threshold: int) -> bool:
        """Refused by someone alive, and fewer than t alive neighbours hold its shares (input kept)."""
        refusers = self.refusals.get(dealer, set()) & alive
        holders = [v for v in neighbours if v in alive and v not in refusers]
        return bool(refusers) and dealer in self.kept and len(holders) < threshold

    def take_out(self, dealer: str, total: np.ndarray, unpack: object) -> None:
        """Subtract a kept input from the running sum (mod 2^32; the caller reduces mod 2^b)."""
        vector = unpack(self.kept[dealer])  # type: ignore[operator]
        np.subtract(total, np.asarray(vector).astype(np.uint32, copy=False), out=total)

    def add_seeds(
        self, reveal: SeedReveal, neighbours: Collection[str], masked: Collection[str]
    ) -> str | None:
        """Store a survivor's pair seeds; returns why they were refused, or None."""
        if self.request is None:
            return "pair seeds nobody asked for"
        if reveal.device not in masked:
            return "pair seeds from a device outside the final survivors"
        wrong = sorted(set(reveal.seeds) - (set(self.dealers) & set(neighbours)))
        if wrong:
            return f"pair seeds for dealers not requested of it: {wrong}"
        for dealer, seed in reveal.seeds.items():
            self.seeds.setdefault(dealer, {}).setdefault(reveal.device, seed)
        self.revealed_seeds.add(reveal.device)
        return None

    def waiting_for(self, graph: Mapping[str, tuple[str, ...]], masked: Collection[str]) -> list[str]:
        """Survivors whose pair seed with some requested dealer has not arrived."""
        missing = {
            u for v in self.dealers for u in graph[v] if u in masked and u not in self.seeds.get(v, {})
        }
        return sorted(missing)


def prepare(server: SecAggServer, sign: Callable[[bytes], bytes]) -> SeedRequest | None:
    """Rebuild every needed secret; exclude the dealers that cannot be rebuilt and return the signed
    request for their pair seeds (None when nothing is missing). Raises RoundAbandoned when a dealer can
    be neither rebuilt nor excluded (fewer than t shares of it revealed, some of them by honest holders)."""
    ex = server.exclusion
    if ex.prepared:
        return ex.request
    t = server.threshold
    for u in sorted(server.masked):
        shares = server.self_mask_shares.get(u, {})
        try:
            ex.secrets[u] = server.recover(u, shares)
            continue
        except SecAggError as exc:
            problem = exc
        proof = None
        if shares:  # honest holders revealed a share of u: only a proof lets them reveal pair seeds too
            holders = {server.graph[u][x - 1]: s for x, s in shares.items()}
            proof = proofs.make_proof(u, holders, signed=ex.signed_digests.get(u), advert=server.adverts[u],
                                      threshold=t)  # fmt: skip
            if proof is None or u not in ex.kept:
                server.abandon(u, f"too few reveals to unmask, and no proof: {problem}")
        elif u not in ex.kept:
            server.abandon(u, f"too few reveals to unmask: {problem}")
        ex.dealers[u] = proof
        server.exclude(u)
    if ex.dealers and len(server.masked) < t:
        # Fewer than t inputs would be unmasked: the sum would say more about each than SecAgg+ allows
        # (and with none left, there is nothing to unmask at all).
        server.abandon(None, f"too few reveals to unmask: {len(server.masked)} inputs left after excluding "
                             f"{len(ex.dealers)} that cannot be rebuilt, threshold {t}")  # fmt: skip
    for v in server.needed_keys():
        if v in ex.dealers:
            continue
        try:
            ex.secrets[v] = server.recover(v, server.mask_key_shares.get(v, {}), mask_key=True)
        except SecAggError:  # its neighbours saw it dropped: pair seeds need no proof
            ex.dealers[v] = None
    ex.prepared = True
    if ex.dealers:
        unsigned = SeedRequest(server.federation, server.round_id, sorted(ex.dealers),
                               [p for p in ex.dealers.values() if p is not None])  # fmt: skip
        ex.request = replace(unsigned, signature=sign(unsigned.signed_bytes()))
        log.info("secagg round=%s: pair seeds requested for %s", server.round_id, sorted(ex.dealers))
    return ex.request


def mask_seeds(server: SecAggServer) -> tuple[list[bytes], list[bytes]]:
    """(plus, minus) seeds whose combined mask is still in the sum (Bonawitz et al. §4 round 4), with
    excluded dealers' pairwise masks removed through the pair seeds their neighbours revealed."""
    ex = server.exclusion
    if not ex.prepared:
        server.seed_request()
    ex.kept.clear()  # every exclusion is decided: the kept inputs are no longer needed
    plus: list[bytes] = []
    minus: list[bytes] = []
    for u in sorted(server.masked):
        plus.append(ex.secrets[u])
    for v in sorted(set(server.needed_keys()) | set(ex.dealers)):
        for u in server.graph[v]:
            if u not in server.masked:
                continue
            if v in ex.dealers:
                seed = ex.seeds.get(v, {}).get(u)
                if seed is None:  # an unmask-phase dropout, or a second misbehaving device
                    server.abandon(u, f"did not reveal its pair seed with excluded {v!r}")
            else:
                seed = keys.pair_seed(ex.secrets[v], server.adverts[u].mask_pk, server.federation,
                                      server.round_id, v, u)  # fmt: skip
            # u added +PRG(s_uv) when u < v and subtracted it otherwise
            (plus if u < v else minus).append(seed)
    return plus, minus
