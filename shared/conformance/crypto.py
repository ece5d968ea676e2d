"""Vector sections for the SecAgg+ primitives: key agreement, PRG, Shamir, graph, bundles."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import numpy as np

from shared.conformance.common import FED, _coefficients, drbg, field_element, hx, identity, round_keys
from shared.secagg import bundles, keys, prg, shamir
from shared.secagg.graph import graph_seed, neighbour_graph, neighbours_of, share_index
from shared.secagg.roster import advert_digest
from shared.wire.secagg import AdvertiseKeys


def crypto_vectors() -> dict[str, Any]:
    ed = []
    for name in ("aggregator", "dev-1"):
        key = identity(name)
        message = f"fedmq vector message for {name}".encode()
        ed.append(
            {
                "seed": hx(bytes(key)),
                "public_key": hx(bytes(key.verify_key)),
                "message": hx(message),
                "signature": hx(keys.sign(key, message)),
            }
        )
    a, b = round_keys("dev-1", 5), round_keys("dev-2", 5)
    x25519 = [{"secret_key": hx(bytes(k.enc_sk)), "public_key": hx(k.enc_pk)} for k in (a, b)] + [
        {"secret_key": hx(k.mask_sk), "public_key": hx(k.mask_pk)} for k in (a, b)
    ]
    pair = keys.pair_seed(a.mask_sk, b.mask_pk, FED, 5, "dev-1", "dev-2")
    assert pair == keys.pair_seed(b.mask_sk, a.mask_pk, FED, 5, "dev-2", "dev-1")
    return {
        "description": "Ed25519 from 32-byte seeds, X25519 public keys, pairwise mask seeds, commitments.",
        "ed25519": ed,
        "x25519": x25519,
        "pair_seed": {
            "federation": FED,
            "round": 5,
            "a": "dev-1",
            "b": "dev-2",
            "a_mask_sk": hx(a.mask_sk),
            "b_mask_pk": hx(b.mask_pk),
            "b_mask_sk": hx(b.mask_sk),
            "a_mask_pk": hx(a.mask_pk),
            "context": hx(msgpack.packb(["pair", FED, 5, "dev-1", "dev-2"], use_bin_type=True)),
            "seed": hx(pair),
        },
        "pair_seed_low_order_peer_key": {"peer_mask_pk": "00" * 32, "error": "SecAggError"},
        "self_mask_commitment": [
            {"seed": hx(k.self_mask), "commitment": hx(k.self_mask_commitment)} for k in (a, b)
        ],
    }


def prg_vectors() -> dict[str, Any]:
    seed = drbg("prg/seed", 32)
    chunks = [{"index": i, "chunk_seed": hx(prg.chunk_seed(seed, i))} for i in (0, 1, 7)]
    expansions = []
    for bits in (5, 8, 12, 16, 24, 32):
        values = prg.expand_chunk(seed, 0, 16, bits)
        expansions.append({"bits": bits, "chunk": 0, "coords": 16, "values": [int(v) for v in values]})
    expansions.append(
        {"bits": 16, "chunk": 1, "coords": 8, "values": [int(v) for v in prg.expand_chunk(seed, 1, 8, 16)]}
    )
    plus = [drbg("prg/plus/0", 32), drbg("prg/plus/1", 32)]
    minus = [drbg("prg/minus/0", 32)]
    length = prg.CHUNK_COORDS + 4464  # crosses a chunk boundary
    combined = prg.combined_mask(plus, minus, 12, 0, length)
    window = prg.combined_mask(plus, minus, 12, prg.CHUNK_COORDS - 6, prg.CHUNK_COORDS + 6)
    assert np.array_equal(window, combined[prg.CHUNK_COORDS - 6 : prg.CHUNK_COORDS + 6])
    return {
        "description": "Mask PRG: chunk seeds, raw expansions (not reduced), combined masks mod 2^b.",
        "seed": hx(seed),
        "chunk_coords": prg.CHUNK_COORDS,
        "chunk_seeds": chunks,
        "expansions": expansions,
        "combined": {
            "plus": [hx(s) for s in plus],
            "minus": [hx(s) for s in minus],
            "bits": 12,
            "length": length,
            "sha256_u32le": hx(hashlib.sha256(combined.astype("<u4").tobytes()).digest()),
            "head": [int(v) for v in combined[:8]],
            "tail": [int(v) for v in combined[-8:]],
            "window": {
                "start": prg.CHUNK_COORDS - 6,
                "stop": prg.CHUNK_COORDS + 6,
                "values": [int(v) for v in window],
            },
        },
    }


def shamir_vectors() -> dict[str, Any]:
    cases = []
    for threshold, holders in ((3, 5), (1, 2), (4, 4)):
        secret = drbg(f"shamir/secret/{threshold}/{holders}", 32)
        coefficients = [field_element(f"shamir/coef/{threshold}/{holders}/{i}") for i in range(threshold - 1)]
        with _coefficients(coefficients):
            shares = shamir.split(secret, threshold, holders)
        subset = {x: shares[x - 1] for x in range(holders, holders - threshold, -1)}
        assert shamir.reconstruct(subset, threshold) == secret
        cases.append(
            {
                "secret": hx(secret),
                "threshold": threshold,
                "holders": holders,
                "coefficients": [hex(c)[2:] for c in coefficients],
                "shares": [hx(s) for s in shares],
                "reconstruct_from_x": sorted(subset),
            }
        )
    xs = [2, 3, 5]
    return {
        "description": "Shamir over GF(2^256+297); coefficients of degree 1.. as big-endian hex.",
        "prime": hex(shamir.PRIME)[2:],
        "share_bytes": shamir.SHARE_BYTES,
        "cases": cases,
        "lagrange_at_zero": {"xs": xs, "coefficients": [hex(c)[2:] for c in shamir.lagrange_at_zero(xs)]},
    }


def graph_vectors() -> dict[str, Any]:
    cases = []
    for n, k in ((5, 4), (12, 4), (12, 6), (3, 10)):
        ids = [f"dev-{i}" for i in range(n)]
        adverts = [_signed_advert(d, 9) for d in ids]
        rows = [(a.device, advert_digest(a)) for a in adverts]
        seed = graph_seed(FED, 9, rows)
        graph = neighbour_graph(ids, k, seed)
        assert all(neighbours_of(ids, k, seed, u) == graph[u] for u in ids)
        cases.append(
            {
                "federation": FED,
                "round": 9,
                "members": [[d, hx(digest)] for d, digest in rows],
                "adverts": [
                    {"signed_bytes": hx(a.signed_bytes()), "signature": hx(a.signature), "digest": hx(g)}
                    for a, (_, g) in zip(adverts, rows, strict=True)
                ],
                "degree": k,
                "graph_seed": hx(seed),
                "neighbours": {u: list(vs) for u, vs in graph.items()},
                "share_index": {u: {v: share_index(graph, u, v) for v in vs} for u, vs in graph.items()},
            }
        )
    return {
        "description": (
            "Advert digests (BLAKE2b-128 of signed bytes + signature), graph seeds over (id, digest) and "
            "SecAgg+ neighbour graphs (Harary over a keyed-hash ring)."
        ),
        "cases": cases,
    }


def _signed_advert(device: str, round_id: int) -> AdvertiseKeys:
    k = round_keys(device, round_id)
    unsigned = AdvertiseKeys(FED, round_id, device, k.enc_pk, k.mask_pk, k.self_mask_commitment)
    return dataclasses.replace(unsigned, signature=keys.sign(identity(device), unsigned.signed_bytes()))


def bundle_vectors() -> dict[str, Any]:
    u, v = round_keys("dev-1", 5), round_keys("dev-2", 5)
    share_b, share_k = drbg("bundle/b", 33), drbg("bundle/k", 33)
    sealed = bundles.seal(
        u.enc_sk, v.enc_pk, FED, 5, "dev-1", "dev-2", self_mask_share=share_b, mask_key_share=share_k
    )
    opened = bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, FED, 5, "dev-1", recipient="dev-2")
    assert (opened.self_mask_share, opened.mask_key_share) == (share_b, share_k)
    return {
        "description": "NaCl Box share bundle sealed by dev-1 for dev-2 under the derived nonce.",
        "federation": FED,
        "round": 5,
        "sender": "dev-1",
        "recipient": "dev-2",
        "sender_enc_sk": hx(bytes(u.enc_sk)),
        "sender_enc_pk": hx(u.enc_pk),
        "recipient_enc_sk": hx(bytes(v.enc_sk)),
        "recipient_enc_pk": hx(v.enc_pk),
        "self_mask_share": hx(share_b),
        "mask_key_share": hx(share_k),
        "nonce": hx(bundles._nonce(FED, 5, "dev-1", "dev-2")),
        "ciphertext": hx(sealed),
        "wrong_binding_round": 6,
    }
