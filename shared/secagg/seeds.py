"""Device side of the pair-seed step (:mod:`shared.secagg.exclusion` is the aggregator's side).

A device reveals the pair seed ``s_uv`` it masked with neighbour ``v`` only when asked by a request the
aggregator signed, after its own reveal, and only when it never revealed a share of ``v``'s self mask
(``v`` was dropped or excluded in its U3 notice, or it refused ``v``'s bundle and so holds no share) -
unless the request carries a valid inconsistency proof against ``v`` (:mod:`shared.secagg.proofs`).
So, without a proof, the aggregator gets for one device either self-mask material or pair material from
each honest neighbour, never both: the same rule that keeps the two kinds of Shamir share apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import nacl.signing

from shared.errors import SecAggError
from shared.secagg import keys, proofs
from shared.wire.secagg import EncryptedShares
from shared.wire.seeds import SeedRequest, SeedReveal

#: What a device records, per neighbour, once it revealed the pair seed with it.
PAIR_SEED = "pair_seed"


def answer(
    request: SeedRequest,
    *,
    device: str,
    identity: nacl.signing.SigningKey,
    threshold: int,
    directory: Mapping[str, bytes],
    mask_sk: bytes,
    peers: Mapping[str, tuple[bytes, bytes]],
    masked_with: Mapping[str, bytes],
    survivors: frozenset[str],
    revealed: dict[str, str],
) -> SeedReveal:
    """The signed pair seeds for the requested dealers this device masked with (``masked_with``: neighbour
    -> its mask public key; ``survivors``: its U3); ``revealed`` (neighbour -> kind of share revealed) is
    updated. Raises :class:`SecAggError` on a dealer whose self-mask share it revealed, unless a valid proof
    comes with it, and when it would leave fewer than t neighbours whose pair seeds it never revealed.
    """
    seeds: dict[str, bytes] = {}
    for dealer in sorted(set(request.dealers) & set(masked_with)):
        if revealed.get(dealer, PAIR_SEED) not in (PAIR_SEED, "mask_key"):
            proof = request.proof_for(dealer)
            if proof is None:
                raise SecAggError(f"pair seed with {dealer!r} asked without proof after its self-mask share")
            proofs.verify_proof(proof, federation=request.federation, round_id=request.round,
                                identity=directory[dealer], dealer_keys=peers[dealer],
                                threshold=threshold)  # fmt: skip
        seeds[dealer] = keys.pair_seed(mask_sk, masked_with[dealer], request.federation, request.round,
                                       device, dealer)  # fmt: skip
    # Privacy floor: at least t neighbours whose pair seeds this device never reveals (dropped ones count as
    # revealed), whatever bundles the aggregator kept from it; docs/security.md has the counting argument.
    kept_secret = {v for v in masked_with if v in survivors} - set(seeds)
    if len(kept_secret) < threshold:
        raise SecAggError(f"revealing {len(seeds)} pair seeds would leave {len(kept_secret)} neighbours' "
                          f"seeds unrevealed, below the threshold {threshold}")  # fmt: skip
    unsigned = SeedReveal(request.federation, request.round, device, seeds)
    for dealer in seeds:
        revealed.setdefault(dealer, PAIR_SEED)
    return replace(unsigned, signature=keys.sign(identity, unsigned.signed_bytes()))


def on_request(
    request: SeedRequest,
    state: Any,
    *,
    device: str,
    identity: nacl.signing.SigningKey,
    aggregator_key: bytes,
    directory: Mapping[str, bytes],
) -> SeedReveal:
    """Check a request against one device's round state (``client._Round``) and answer it once."""
    keys.verify(aggregator_key, request.signed_bytes(), request.signature, "seed request")
    if state.reveal is None or state.roster is None or state.shared is None:
        raise SecAggError("seed request before this device revealed")
    if state.seed_reveal is not None:
        if state.seed_request == request:
            return state.seed_reveal  # type: ignore[no-any-return]  # QoS 1 duplicate
        raise SecAggError("a second, different seed request")
    if device in request.dealers:
        raise SecAggError("this device's own input was excluded: it has no pair seed to reveal")
    masked_with = {v: state.peers[v][1] for v in state.neighbours if v in state.shared}
    reveal = answer(request, device=device, identity=identity, threshold=state.roster.threshold,
                    directory=directory, mask_sk=state.keys.mask_sk, peers=state.peers,
                    masked_with=masked_with, survivors=state.survivors, revealed=state.revealed)  # fmt: skip
    state.seed_request, state.seed_reveal = request, reveal
    return reveal


def reportable(state: Any, message: EncryptedShares) -> bool:
    """Whether a refused bundle goes into this device's refusal report: one of this round, from a
    neighbour, before the device masked (a stale or misaddressed bundle is no complaint about its sender)."""
    return (state is not None and state.shared is None and message.round == state.round_id
            and message.sender in state.neighbours)  # fmt: skip
