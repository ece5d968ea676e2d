"""Conformance vectors of the pair-seed step (docs/protocol.md; shared/secagg/exclusion.py, proofs.py).

Signed canonical lists of the new messages (a masked input with a refusal report, a dealer's signed
digests, a seed request with a proof, a seed reveal), and inconsistency proofs a device must accept or
refuse: a dealer that placed one share off its polynomial (valid), and four forgeries against that
dealer's consistent shares (honest shares, a changed share, digests signed by the aggregator, a
commitment it never advertised).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.conformance.common import FED, _coefficients, drbg, hx, identity, round_keys
from shared.secagg import bundles, keys, shamir
from shared.wire import encode
from shared.wire.secagg import AdvertiseKeys, MaskedInput, digests_signed_bytes
from shared.wire.seeds import InconsistencyProof, SeedRequest, SeedReveal

ROUND = 9
DEALER = "dev-1"
HOLDERS = ["dev-2", "dev-3", "dev-4", "dev-5"]
THRESHOLD = 3


def _signed(name: str, msg: Any, signer: Any, valid: bool = True) -> dict[str, Any]:
    signed = dataclasses.replace(msg, signature=keys.sign(signer, msg.signed_bytes()))
    return {"name": name, "message": hx(encode(signed)), "signed_bytes": hx(msg.signed_bytes()),
            "signer": hx(bytes(signer.verify_key)), "valid": valid}  # fmt: skip


def _dealing() -> tuple[bytes, dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """(seed, honest shares, dealt shares with dev-4's off the polynomial, signed-for digests)."""
    seed = drbg("seeds/self_mask", 32)
    coefficients = [int.from_bytes(drbg(f"seeds/coef/{i}", 32), "little") for i in range(THRESHOLD - 1)]
    with _coefficients(coefficients):
        honest = dict(zip(HOLDERS, shamir.split(seed, THRESHOLD, len(HOLDERS))))
    dealt = {**honest, "dev-4": drbg("seeds/off-polynomial", 32) + b"\x00"}
    key_share = drbg("seeds/mask-key-share", 32) + b"\x00"
    digests = {h: bundles.bundle_digest(FED, ROUND, DEALER, h, s, key_share) for h, s in dealt.items()}
    return seed, honest, dealt, digests


def seed_vectors() -> dict[str, Any]:
    agg, dealer, dev = identity("aggregator"), identity(DEALER), identity("dev-2")
    seed, honest, dealt, digests = _dealing()
    signature = keys.sign(dealer, digests_signed_bytes(FED, ROUND, DEALER, digests))
    dealer_keys = round_keys(DEALER, ROUND)
    commitment = keys.commit_self_mask(seed)
    advert = AdvertiseKeys(FED, ROUND, DEALER, dealer_keys.enc_pk, dealer_keys.mask_pk, commitment)
    advert_signature = keys.sign(dealer, advert.signed_bytes())
    proof = InconsistencyProof(DEALER, digests, signature, {h: dealt[h] for h in ("dev-2", "dev-3", "dev-4")},
                               advert.self_mask_commitment, advert_signature)  # fmt: skip
    honest_proof = dataclasses.replace(proof, shares={h: honest[h] for h in ("dev-2", "dev-3", "dev-5")})
    changed = dataclasses.replace(proof, shares={**proof.shares, "dev-2": honest["dev-3"]})
    by_aggregator = dataclasses.replace(
        honest_proof, digest_signature=keys.sign(agg, digests_signed_bytes(FED, ROUND, DEALER, digests))
    )
    # A commitment the dealer never advertised (the aggregator's own), so that honest shares miss it.
    other_commitment = dataclasses.replace(honest_proof, commitment=keys.commit_self_mask(bytes(32)))
    request = SeedRequest(FED, ROUND, ["dev-6", DEALER], [proof])
    pair_seeds = {DEALER: drbg("seeds/pair", 32), "dev-6": drbg("seeds/pair6", 32)}
    reveal = SeedReveal(FED, ROUND, "dev-2", pair_seeds)
    masked = MaskedInput(FED, ROUND, "dev-2", bytes(range(10)), 16, 5, refused=["dev-6", DEALER])
    proofs = [
        ("dealt one share off its polynomial", proof, True),
        ("honest shares (rebuild the commitment): forged", honest_proof, False),
        ("a share that differs from its signed digest", changed, False),
        ("digests signed by the aggregator, not the dealer", by_aggregator, False),
        ("a commitment the dealer did not advertise", other_commitment, False),
    ]
    return {
        "description": "Pair-seed step: signed lists of its messages, and inconsistency proofs to check "
        "(shared/secagg/proofs.py). A share's x is its holder's position + 1 in the sorted signed digests.",
        "federation": FED,
        "round": ROUND,
        "threshold": THRESHOLD,
        "dealer": DEALER,
        "dealer_public_key": hx(bytes(dealer.verify_key)),
        "dealer_enc_pk": hx(advert.enc_pk),
        "dealer_mask_pk": hx(advert.mask_pk),
        "commitment": hx(advert.self_mask_commitment),
        "digests_signed_bytes": hx(digests_signed_bytes(FED, ROUND, DEALER, digests)),
        "digest_signature": hx(signature),
        "signatures": [
            _signed("masked input with a refusal report", masked, dev),
            _signed("seed request with a proof", request, agg),
            _signed("seed reveal", reveal, dev),
        ],
        "proofs": [{"name": name, "request": _request(agg, p), "valid": valid} for name, p, valid in proofs],
    }


def _request(agg: Any, proof: InconsistencyProof) -> str:
    unsigned = SeedRequest(FED, ROUND, [DEALER], [proof])
    return hx(encode(dataclasses.replace(unsigned, signature=keys.sign(agg, unsigned.signed_bytes()))))
