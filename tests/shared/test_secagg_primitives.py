"""Building blocks of SecAgg+: PRG, Shamir, graph, key agreement, bundles, wire messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import CodecError, SecAggError, WireError
from shared.secagg import bundles, keys, prg, shamir
from shared.secagg.graph import graph_seed, neighbour_graph, share_index
from shared.wire.base import decode, encode
from shared.wire.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    Roster,
    RosterMember,
    ShareBatch,
    SurvivorList,
    UnmaskReveal,
)

SEEDS = [bytes([i]) * 32 for i in range(1, 6)]


# -- PRG ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 7, 8, 9, 16, 17, 32])
def test_mask_values_in_range_and_narrow_dtype(bits: int) -> None:
    assert np.dtype(prg.mask_dtype(bits)).itemsize == (1 if bits <= 8 else 2 if bits <= 16 else 4)
    m = prg.combined_mask(SEEDS[:2], SEEDS[2:3], bits, 0, 70_000)
    assert m.dtype == np.uint32 and int(m.max()) < 1 << bits


@settings(max_examples=25, deadline=None, database=None)
@given(
    start=st.integers(0, 3 * prg.CHUNK_COORDS),
    width=st.integers(0, 2 * prg.CHUNK_COORDS),
    bits=st.sampled_from([3, 8, 13, 16, 32]),
)
def test_any_coordinate_range_matches_the_full_expansion(start: int, width: int, bits: int) -> None:
    full = prg.combined_mask(SEEDS[:1], SEEDS[1:2], bits, 0, start + width)
    part = prg.combined_mask(SEEDS[:1], SEEDS[1:2], bits, start, start + width)
    np.testing.assert_array_equal(part, full[start:])


def test_plus_and_minus_cancel() -> None:
    assert not prg.combined_mask(SEEDS, SEEDS, 32, 0, 100_000).any()


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_parallel_expansion_equals_serial(pool: str) -> None:
    length = 5 * prg.CHUNK_COORDS + 123
    serial = prg.combined_mask(SEEDS[:3], SEEDS[3:], 20, 0, length)
    parallel = prg.combined_mask_parallel(SEEDS[:3], SEEDS[3:], 20, length, workers=2, pool=pool)
    np.testing.assert_array_equal(serial, parallel)


def test_prg_rejects_short_seeds_and_bad_bits() -> None:
    with pytest.raises(CodecError):
        prg.combined_mask([b"short"], [], 8, 0, 10)
    with pytest.raises(CodecError):
        prg.combined_mask([SEEDS[0]], [], 33, 0, 10)


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _chi_square_limit(dof: int, z: float = 5.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(dof) at z standard deviations (p ~ 3e-7 for z=5)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("bits", [4, 8, 16, 32])
def test_masked_vector_is_uniform(bits: int) -> None:
    """A single masked vector of a *constant* input looks uniform: byte/value histogram chi-square test.

    Threshold: Wilson-Hilferty chi-square quantile at 5 sigma (false alarm ~3e-7 per test).
    """
    x = np.full(2**18, 7 % (1 << bits), dtype=np.uint32)
    masks = prg.combined_mask(
        [keys.self_mask_seed(), keys.self_mask_seed()], [keys.self_mask_seed()], bits, 0, x.size
    )
    y = (x + masks) & prg.modulus_mask(bits)
    if bits <= 8:
        counts = np.bincount(y, minlength=1 << bits)
    else:  # every byte of the little-endian coordinates, low ceil(bits/8) bytes
        raw = y.astype("<u4").view(np.uint8).reshape(-1, 4)[:, : (bits + 7) // 8]
        counts = np.bincount(raw.ravel(), minlength=256)
    assert _chi_square(counts) < _chi_square_limit(counts.size - 1)
    # and a non-uniform input must fail the same test (the statistic has power)
    assert _chi_square(np.bincount(np.repeat(np.arange(16), 1000) % 8, minlength=16)) > _chi_square_limit(15)


# -- Shamir ---------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, database=None)
@given(k=st.integers(1, 80), data=st.data())
def test_any_t_shares_reconstruct(k: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, k))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split(secret, t, k)
    picked = data.draw(st.lists(st.integers(1, k), min_size=t, max_size=k, unique=True))
    assert shamir.reconstruct({x: shares[x - 1] for x in picked}, t) == secret


def test_fewer_than_t_shares_refused() -> None:
    shares = shamir.split(SEEDS[0], 5, 9)
    with pytest.raises(shamir.NotEnoughShares):
        shamir.reconstruct({x: shares[x - 1] for x in range(1, 5)}, 5)


def test_t_minus_one_shares_do_not_yield_the_secret() -> None:
    """Interpolating t-1 shares gives some field element, not the secret (w.p. 1 - 2^-256)."""
    shares = shamir.split(SEEDS[0], 3, 5)
    try:
        wrong = shamir.reconstruct({1: shares[0], 2: shares[1]}, 2)
    except SecAggError:
        return  # not even 32 bytes
    assert wrong != SEEDS[0]


def test_corrupted_share_does_not_rebuild_the_secret() -> None:
    shares = shamir.split(SEEDS[0], 3, 5)
    bad = (int.from_bytes(shares[0], "little") ^ 1 << 200).to_bytes(shamir.SHARE_BYTES, "little")
    try:
        wrong = shamir.reconstruct({1: bad, 2: shares[1], 3: shares[2]}, 3)
    except SecAggError:
        return
    assert wrong != SEEDS[0]
    assert shamir.reconstruct({2: shares[1], 3: shares[2], 4: shares[3]}, 3) == SEEDS[0]


def test_share_is_33_bytes_and_out_of_field_value_refused() -> None:
    shares = shamir.split(SEEDS[0], 2, 3)
    assert all(len(s) == 33 for s in shares)
    too_big = shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "little")
    with pytest.raises(SecAggError, match="not a field element"):
        shamir.reconstruct({1: too_big, 2: shares[1]}, 2)


# -- graph ----------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, database=None)
@given(n=st.integers(3, 300), half_k=st.integers(1, 40), seed=st.binary(min_size=32, max_size=32))
def test_graph_is_symmetric_regular_and_deterministic(n: int, half_k: int, seed: bytes) -> None:
    ids = [f"dev-{i:04d}" for i in range(n)]
    k = 2 * half_k
    graph = neighbour_graph(ids, k, seed)
    assert graph == neighbour_graph(list(reversed(ids)), k, seed)
    expected_degree = min(k, n - 1)
    for u, ns in graph.items():
        assert u not in ns and len(ns) == expected_degree and list(ns) == sorted(ns)
        for v in ns:
            assert u in graph[v]
            assert 1 <= share_index(graph, u, v) <= len(ns)


def test_graph_seed_binds_keys() -> None:
    rows = [("a", b"1" * 16), ("b", b"3" * 16)]
    swapped = [("a", b"9" * 16), ("b", b"3" * 16)]
    assert graph_seed("f", 1, rows) == graph_seed("f", 1, list(reversed(rows)))
    assert graph_seed("f", 1, rows) != graph_seed("f", 1, swapped)
    assert graph_seed("f", 1, rows) != graph_seed("f", 2, rows)


# -- keys and bundles -----------------------------------------------------------------------------
def test_pair_seed_is_symmetric_and_bound_to_round() -> None:
    a, b = keys.RoundKeys.generate(), keys.RoundKeys.generate()
    s_ab = keys.pair_seed(a.mask_sk, b.mask_pk, "f", 3, "a", "b")
    assert s_ab == keys.pair_seed(b.mask_sk, a.mask_pk, "f", 3, "b", "a")
    assert s_ab != keys.pair_seed(a.mask_sk, b.mask_pk, "f", 4, "a", "b")
    assert s_ab != keys.pair_seed(a.mask_sk, b.mask_pk, "g", 3, "a", "b")
    with pytest.raises(SecAggError):
        keys.pair_seed(a.mask_sk, b"\0" * 32, "f", 3, "a", "b")  # low-order point


def test_bundle_forwarding_and_replay_refused() -> None:
    u, v, w = (keys.RoundKeys.generate() for _ in range(3))
    share = b"\1" * shamir.SHARE_BYTES
    sealed = bundles.seal(u.enc_sk, v.enc_pk, "f", 1, "u", "v", self_mask_share=share, mask_key_share=share)
    assert (
        bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, "f", 1, "u", recipient="v").self_mask_share == share
    )
    assert len(sealed) == bundles.SEALED_BYTES == 2 * 33 + 16  # no nonce, no binding on the wire
    with pytest.raises(SecAggError, match="does not decrypt"):  # forwarded to w
        bundles.open_bundle(w.enc_sk, u.enc_pk, sealed, "f", 1, "u", recipient="w")
    with pytest.raises(SecAggError, match="does not decrypt"):  # replayed into round 2 under the same keys
        bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, "f", 2, "u", recipient="v")
    with pytest.raises(SecAggError, match="does not decrypt"):  # into another federation
        bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, "g", 1, "u", recipient="v")
    # u re-labels a bundle it made for v as coming from "x": the binding names the true sender
    with pytest.raises(SecAggError, match="does not decrypt"):
        bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, "f", 1, "x", recipient="v")
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(SecAggError, match="does not decrypt"):
        bundles.open_bundle(v.enc_sk, u.enc_pk, flipped, "f", 1, "u", recipient="v")
    with pytest.raises(SecAggError, match="expected"):
        bundles.open_bundle(v.enc_sk, u.enc_pk, sealed + b"\0", "f", 1, "u", recipient="v")


# -- wire -----------------------------------------------------------------------------------------
def test_wire_messages_round_trip() -> None:
    member = RosterMember("dev-1", b"a" * 32, b"b" * 32, b"c" * 32, b"d" * 64)
    messages = [
        AdvertiseKeys("f", 1, "dev-1", b"a" * 32, b"b" * 32, b"c" * 32, b"s" * 64),
        Roster("f", 1, [member], b"g" * 32, 1, 1, 16, 10, b"s" * 64),
        EncryptedShares("f", 1, "dev-1", "dev-2", b"cipher"),
        ShareBatch("f", 1, "dev-1", {"dev-2": b"c2", "dev-3": b"c3"}),
        SurvivorList("f", 1, "masked", ["dev-1", "dev-2"], b"s" * 64),
        MaskedInput("f", 1, "dev-1", b"\0" * 40, 32, 10, b"s" * 64),
        UnmaskReveal("f", 1, "dev-1", {"dev-2": b"x"}, {"dev-3": b"y"}, b"s" * 64),
    ]
    for message in messages:
        assert decode(encode(message)) == message


def test_share_batch_names_each_bundle_by_its_peer_only() -> None:
    sealed = b"\7" * bundles.SEALED_BYTES
    out = [EncryptedShares("f", 3, "dev-001", f"dev-{i:03d}", sealed) for i in range(2, 14)]
    upload = ShareBatch.outgoing("f", 3, "dev-001", out)
    assert decode(encode(upload)).sent_bundles() == out
    inbox = ShareBatch.inbox("f", 3, "dev-002", [out[0]])
    assert decode(encode(inbox)).received_bundles() == [out[0]]
    # the envelope is paid once: 12 bundles cost the ciphertext plus ~10 B of peer id each
    assert len(encode(upload)) < 12 * (bundles.SEALED_BYTES + 12) + 80
    with pytest.raises(ValueError, match="as sender"):
        ShareBatch.outgoing("f", 3, "dev-002", out)
    with pytest.raises(ValueError, match="itself"):
        ShareBatch("f", 3, "dev-001", {"dev-001": sealed})


def test_wire_rejects_malformed_secagg_messages() -> None:
    import msgpack

    body = {
        "v": 1,
        "t": "secagg.survivor_list",
        "federation": "f",
        "round": 1,
        "phase": "bogus",
        "devices": [],
        "signature": b"s" * 64,
    }
    with pytest.raises(WireError):
        decode(msgpack.packb(body, use_bin_type=True))
    body = {
        "v": 1,
        "t": "secagg.unmask_reveal",
        "federation": "f",
        "round": 1,
        "device": "a",
        "self_mask_shares": {"b": b"x"},
        "mask_key_shares": {"b": b"y"},
        "signature": b"s" * 64,
    }
    with pytest.raises(WireError, match="both kinds"):
        decode(msgpack.packb(body, use_bin_type=True))
    with pytest.raises(ValueError):
        AdvertiseKeys("f", 1, "a", b"short", b"b" * 32, b"c" * 32)
