"""Who broke which SecAgg+ rule: the aggregator-side checks that name a hostile device.

Split from :mod:`shared.secagg.server` (which calls it with a line or two) so the round core stays
small. Every rule, and why it never names an honest device, is in docs/security.md ("Hostile devices"):

* a revealed share that differs from its dealer's published digest was changed by its *revealer*;
* shares that match their digests but lie on no one polynomial were dealt wrong by the *dealer*;
* a device short of t openable shares while t of its neighbours revealed had its bundles refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Mapping

from shared.errors import SecAggError
from shared.offences import Offences
from shared.secagg import bundles, keys, shamir
from shared.wire.secagg import EncryptedShares

WEAK_KEY = "secagg-weak-key"
CORRUPT_REVEAL = "secagg-corrupt-reveal"
UNRECOVERABLE_SECRET = "secagg-unrecoverable-secret"
INCONSISTENT_DEALER = "secagg-inconsistent-dealer"
#: A wrong share of a dealer that published no digests: the holder or the dealer lied (not proven).
DISPUTED_SHARE = "secagg-disputed-share"
#: At least t of a device's neighbours revealed, yet fewer than t held a share of it they could open.
#: Framing an honest device this way takes more lying neighbours (revealers - t + 1) than tolerated.
BUNDLES_REFUSED = "secagg-bundles-refused"
#: Rules that quarantine a device for the following rounds: evidence signed by the offender (advert,
#: reveal, dealt shares with their digests), or refusals by more neighbours than could be colluding.
QUARANTINE_RULES = frozenset({WEAK_KEY, CORRUPT_REVEAL, INCONSISTENT_DEALER, BUNDLES_REFUSED})
#: t-subsets tried (each against the owner's commitment) when Reed-Solomon decoding does not succeed.
MAX_SUBSET_TRIES = 256


class Attribution:
    """One round's attribution state: the graph, the dealt bundles (with digests), the offence log."""

    def __init__(
        self,
        federation: str,
        round_id: int,
        graph: dict[str, tuple[str, ...]],
        dealt: Mapping[tuple[str, str], EncryptedShares],
        offences: Offences,
    ) -> None:
        self.federation = federation
        self.round_id = round_id
        self.graph = graph
        self._dealt = dealt
        self.offences = offences
        self._blamed: set[str] = set()
        self._context = f"round={round_id}"

    def attested(self, owner: str, holder: str) -> bool:
        """Whether ``owner`` published digests for the bundle it dealt ``holder``."""
        bundle = self._dealt.get((owner, holder))
        return bundle is not None and bool(bundle.digest)

    def matches_digest(self, owner: str, holder: str, kind: str, share: bytes) -> bool:
        """Whether ``share`` is what ``owner`` committed to dealing ``holder`` (True without a digest)."""
        bundle = self._dealt.get((owner, holder))
        if bundle is None or not bundle.digest:
            return True
        half = bundles.SHARE_DIGEST_BYTES
        expected = bundle.digest[:half] if kind == bundles.SELF_MASK_KIND else bundle.digest[half:]
        return bundles.share_digest(self.federation, self.round_id, owner, holder, kind, share) == expected

    def blame_unrevealed(self, owner: str, revealed_by: Collection[str], threshold: int) -> None:
        """Name ``owner`` (once) when t of its neighbours revealed but fewer than t held its share."""
        revealers = [v for v in self.graph[owner] if v in revealed_by]
        if len(revealers) >= threshold and owner not in self._blamed:
            self._blamed.add(owner)
            reason = f"{len(revealers)} neighbours revealed, fewer than {threshold} held an openable share"
            self.offences.record(owner, BUNDLES_REFUSED, reason, context=self._context)

    def recover(
        self, owner: str, shares: dict[int, bytes], threshold: int, check: Callable[[bytes], bool]
    ) -> bytes:
        """Rebuild ``owner``'s secret from revealed shares; raise :class:`SecAggError` naming why not.

        Reed-Solomon decoding (:func:`shamir.robust_reconstruct`, up to ``(m - t) // 2`` wrong shares),
        then up to :data:`MAX_SUBSET_TRIES` t-subsets, each checked against the owner's commitment.
        Revealed shares already matched their digests, so a share off the recovered polynomial was
        dealt wrong: the dealer is named; without digests either side may have lied (disputed share).
        """
        t = threshold
        if len(shares) < t:
            raise SecAggError(f"{len(shares)} shares of {owner!r}, need {t}")
        found: tuple[bytes, list[int]] | None = None
        try:
            secret, wrong = shamir.robust_reconstruct(shares, t)
            if check(secret):
                found = secret, wrong
        except SecAggError:
            pass
        for tries, subset in enumerate(itertools.combinations(sorted(shares), t)):
            if found is not None or tries >= MAX_SUBSET_TRIES:
                break
            try:
                secret = shamir.reconstruct({x: shares[x] for x in subset}, t)
            except SecAggError:
                continue
            if check(secret):
                found = secret, shamir.off_polynomial(subset, shares)
        if found is None:
            proven = all(self.attested(owner, self.graph[owner][x - 1]) for x in shares)
            reason = f"no {t} of the {len(shares)} revealed shares rebuild the committed secret" + (
                " (inconsistent dealer)" if proven else " (dealt without digests: dealer or holders lied)"
            )
            self.offences.record(owner, INCONSISTENT_DEALER if proven else UNRECOVERABLE_SECRET, reason,
                                 context=self._context)  # fmt: skip
            raise SecAggError(f"{owner!r}: {reason}")
        secret, wrong = found
        for x in wrong:
            holder = self.graph[owner][x - 1]
            if self.attested(owner, holder):
                reason = f"dealt {holder!r} a share off its polynomial"
                self.offences.record(owner, INCONSISTENT_DEALER, reason, context=self._context)
            else:
                reason = f"share of {owner!r} (dealt without digests) is off its polynomial"
                self.offences.record(holder, DISPUTED_SHARE, reason, context=self._context)
        return secret


def opens(commitment: bytes) -> Callable[[bytes], bool]:
    """Does a recovered self-mask seed open ``commitment``?"""
    return lambda seed: keys.commit_self_mask(seed) == commitment


def derives(mask_pk: bytes) -> Callable[[bytes], bool]:
    """Does a recovered mask secret key give the advertised public key ``mask_pk``?"""
    return lambda secret: keys.mask_public_key(secret) == mask_pk
