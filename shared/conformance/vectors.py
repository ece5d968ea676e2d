"""Build fedmq's conformance vectors from the product code, deterministically.

Every vector is computed by calling the same functions the aggregator and the Python device use; nothing
here re-implements a protocol step. Randomness is the only thing replaced: key pairs come from fixed
32-byte seeds, Shamir's random coefficients and the stochastic-rounding uniforms from seeded streams, and
both are *recorded in the vector*, so a second implementation injects them instead of drawing its own.

Value conventions (also in ``spec/vectors/README.md``): byte strings are lowercase hex; a float32 or
float64 array is the hex of its little-endian bytes; ``typed`` values (message fields) map bytes to
``{"bin": hex}`` and floats to ``{"float": x}`` so that JSON's single number type loses nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import msgpack
import nacl.bindings
import nacl.public
import nacl.signing
import numpy as np

from shared import chunking, signing, snapshots
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, bitpack, pack
from shared.codec.clip import clip_factor
from shared.codec.rotation import PURPOSE_SIGNS, PURPOSE_SIGNS_TAIL, PURPOSE_SUBSAMPLE, seeded_bits
from shared.codec.snapshot import weights_digest
from shared.layout import ModelLayout
from shared.secagg import SecAggClient, SecAggServer, bundles, keys, prg, shamir
from shared.secagg.graph import graph_seed, neighbour_graph, share_index
from shared.topics import KEYS, MASKED, MAX_CHUNK_INDEX, MAX_ROUND_ID, SHARES, UNMASK, UPDATE, Topics
from shared.wire import (
    Chunk,
    ChunkManifest,
    Message,
    ModelSnapshot,
    ModelUpdate,
    ParamSpec,
    Presence,
    RoundAnnounce,
    RoundResult,
    decode,
    encode,
)
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

#: Bumped when the layout of the vector files changes (not when the protocol does: that shows as a diff).
VECTORS_VERSION = 1
FED = "demo"
_PERSON = b"fedmq.vectors"


# -- deterministic inputs --------------------------------------------------------------------------------


def drbg(label: str, size: int) -> bytes:
    """``size`` bytes of ChaCha20 output keyed by BLAKE2b(label): the vectors' only source of "randomness"."""
    seed = hashlib.blake2b(label.encode(), digest_size=32, person=_PERSON).digest()
    return nacl.bindings.randombytes_buf_deterministic(size, seed)


def field_element(label: str) -> int:
    """A Shamir coefficient as the product draws one: 48 bytes, little-endian, mod p."""
    return int.from_bytes(drbg(label, 48), "little") % shamir.PRIME


def uniforms(label: str, count: int) -> np.ndarray:
    """Stochastic-rounding draws in [0, 1) (the product uses the device's private numpy generator)."""
    seed = int.from_bytes(drbg(label, 16), "little")
    return np.random.default_rng(seed).random(count)


class _Replay:
    """A stand-in for ``np.random.Generator`` that hands out pre-drawn uniforms in order."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values
        self._at = 0

    def random(self, size: int) -> np.ndarray:
        out = self._values[self._at : self._at + size]
        if out.size != size:
            raise ValueError("replayed uniforms exhausted")
        self._at += size
        return out


@contextmanager
def _coefficients(values: list[int]) -> Iterator[None]:
    """Make ``shamir.split`` draw its random coefficients from ``values`` (in call order)."""
    feed = iter(values)
    with mock.patch.object(shamir, "_random_field_element", lambda: next(feed)):
        yield


# -- JSON helpers ----------------------------------------------------------------------------------------


def hx(data: bytes) -> str:
    return bytes(data).hex()


def f32_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f4").tobytes().hex()


def f64_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f8").tobytes().hex()


def typed(value: Any) -> Any:
    """A wire value as typed JSON: ``{"bin": hex}`` for bytes, ``{"float": x}`` for floats."""
    if isinstance(value, (bytes, bytearray)):
        return {"bin": bytes(value).hex()}
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return {"float": value}
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return {f.name: typed(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise TypeError(f"no typed JSON form for {type(value).__name__}")


def message_case(name: str, msg: Message) -> dict[str, Any]:
    """One message: its type, its fields (typed, in wire order) and its canonical msgpack bytes."""
    return {"name": name, "type": msg.TYPE, "fields": typed(msg), "msgpack": hx(encode(msg))}


# -- fixed identities ------------------------------------------------------------------------------------


def identity(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(drbg(f"identity/{name}", 32))


def round_keys(name: str, round_id: int) -> keys.RoundKeys:
    return keys.RoundKeys(
        enc_sk=nacl.public.PrivateKey(drbg(f"enc/{name}/{round_id}", 32)),
        mask_sk=drbg(f"mask/{name}/{round_id}", 32),
        self_mask=drbg(f"self/{name}/{round_id}", 32),
    )


# -- sections --------------------------------------------------------------------------------------------


def wire_vectors() -> dict[str, Any]:
    agg = identity("aggregator")
    dev = identity("dev-1")
    layout = [ParamSpec("fc.weight", [2, 3]), ParamSpec("fc.bias", [2])]
    body = np.arange(8, dtype="<f4").tobytes()
    snap = ModelSnapshot(FED, 3, 2, layout, "f32", body, hashlib.sha256(body).digest(), 1700000000.25)
    announce = RoundAnnounce(
        FED,
        5,
        3,
        "keys",
        1700000000.0,
        1700000045.5,
        3,
        10,
        {"mode": "secure", "weight_cap": 1000, "windows": {"keys": 5.0, "masked": 30.0}},
    )
    advert = AdvertiseKeys(FED, 5, "dev-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    member = RosterMember("dev-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64)
    roster = Roster(FED, 5, [member], b"\x05" * 32, 4, 3, 16, 12)
    batch = ShareBatch(FED, 5, "dev-1", {"dev-2": b"\x06" * 82, "dev-3": b"\x07" * 82})
    notice = SurvivorList(FED, 5, "shared", ["dev-3", "dev-1", "dev-2"])
    masked = MaskedInput(FED, 5, "dev-1", bytes(range(24)), 16, 12)
    reveal = UnmaskReveal(FED, 5, "dev-1", {"dev-2": b"\x08" * 33}, {"dev-3": b"\x09" * 33})
    cases = [
        message_case("model snapshot, f32 body, signed", signing.sign(snap, agg)),
        message_case("round announcement, signed", signing.sign(announce, agg)),
        message_case(
            "plain update",
            ModelUpdate(5, "dev-1", 3, 120, "f32", 2, np.array([0.5, -1.0], "<f4").tobytes(), {"loss": 0.25}),
        ),
        message_case("result", RoundResult(5, "closed", 4, 3, "", {"loss": 0.125})),
        message_case("presence online", Presence("dev-1", True, 1700000001.5, 1 << 20, [100, 20])),
        message_case("presence offline (last will)", Presence("dev-1", False, 1700000002.0)),
        message_case("chunk manifest", ChunkManifest(b"\x0a" * 16, 1000, 904, 2, b"\x0b" * 32)),
        message_case("chunk", Chunk(b"\x0a" * 16, 1, b"tail")),
        message_case(
            "secagg advert, signed",
            dataclasses.replace(advert, signature=keys.sign(dev, advert.signed_bytes())),
        ),
        message_case("secagg roster (signatures are placeholders)", roster),
        message_case("secagg share batch", batch),
        message_case(
            "secagg encrypted shares (registered, in-memory only: bundles travel in share batches)",
            EncryptedShares(FED, 5, "dev-1", "dev-2", b"\x06" * 82),
        ),
        message_case("secagg survivor list", notice),
        message_case("secagg masked input", masked),
        message_case("secagg unmask reveal", reveal),
    ]
    good = encode(Presence("dev-1", True, 1.0))
    rejects = [
        {"reason": "unsupported schema version", "msgpack": hx(good.replace(b"\xa1v\x01", b"\xa1v\x02"))},
        {"reason": "unknown message type", "msgpack": hx(good.replace(b"presence", b"presents"))},
        {"reason": "not a map", "msgpack": hx(b"\x93\x01\x02\x03")},
        {"reason": "truncated", "msgpack": hx(good[:-3])},
        {
            "reason": "bin field sent as str",
            "msgpack": hx(encode(Chunk(b"\x0a" * 16, 0, b"x")).replace(b"\xc4\x01x", b"\xa1x")),
        },
        {
            "reason": "int field sent as bool",
            "msgpack": hx(encode(Chunk(b"\x0a" * 16, 0, b"x")).replace(b"\xa5index\x00", b"\xa5index\xc2")),
        },
        {
            "reason": "unknown field",
            "msgpack": hx(b"\x84\xa1v\x01\xa1t\xa8presence\xa9client_id\xa1a\xa1x\x01"),
        },
        {"reason": "missing field", "msgpack": hx(b"\x83\xa1v\x01\xa1t\xa8presence\xa9client_id\xa1a")},
    ]
    return {
        "description": "Message encodings (canonical msgpack) and payloads a decoder must refuse.",
        "cases": cases,
        "rejects": rejects,
    }


def topic_vectors() -> dict[str, Any]:
    t = Topics(FED)
    return {
        "description": "Topic strings of federation 'demo' for device 'dev-1' in round 5.",
        "federation": FED,
        "device": "dev-1",
        "round": 5,
        "topics": {
            "model": t.model,
            "model_chunk_3": t.model_chunk(3),
            "delta": t.delta,
            "delta_chunk_0": t.delta_chunk(0),
            "round": t.round,
            "roster": t.roster,
            "notice": t.notice,
            "result": t.result,
            "status": t.status("dev-1"),
            "inbox": t.inbox("dev-1"),
            "inbox_chunk_2": t.inbox_chunk("dev-1", 2),
            "update": t.round_msg(5, UPDATE, "dev-1"),
            "keys": t.round_msg(5, KEYS, "dev-1"),
            "shares": t.round_msg(5, SHARES, "dev-1"),
            "masked": t.round_msg(5, MASKED, "dev-1"),
            "masked_chunk_1": t.round_chunk(5, MASKED, "dev-1", 1),
            "unmask": t.round_msg(5, UNMASK, "dev-1"),
        },
        "valid_ids": ["dev-1", "A_b-c-9", "x" * 64],
        "invalid_ids": ["", "dev/1", "dev+1", "dev#1", "dév", "x" * 65, "a b", "dev-1\n", "dev.1"],
        "max_round_id": MAX_ROUND_ID,
        "max_chunk_index": MAX_CHUNK_INDEX,
        "invalid_round_topics": [
            f"fl/{FED}/r/²/masked/dev-1",
            f"fl/{FED}/r/05/masked/dev-1",
            f"fl/{FED}/r/-5/masked/dev-1",
            f"fl/{FED}/r/{MAX_ROUND_ID + 1}/masked/dev-1",
            f"fl/{FED}/r/5/masked/dev-1/c/٣",
            f"fl/{FED}/r/5/masked/dev-1/c/{MAX_CHUNK_INDEX + 1}",
            f"fl/{FED}/r/5/masked/dev-1/x/1",
            f"fl/{FED}/r/5/bogus/dev-1",
        ],
        "invalid_chunk_suffixes": ["²", "01", "-1", "+1", "1.0", "", str(MAX_CHUNK_INDEX + 1), " 1"],
    }


def chunking_vectors() -> dict[str, Any]:
    payload = encode(ModelUpdate(5, "dev-1", 3, 10, "f32", 100, drbg("chunking/payload", 400)))
    cases = []
    for limit in (1 << 20, 200, 500):
        frames = chunking.split(payload, limit)
        cases.append(
            {
                "limit": limit,
                "frames": [{"chunk": f.chunk, "payload": hx(f.payload)} for f in frames],
            }
        )
    return {
        "description": "chunking.split of one encoded update at three limits (chunk None: message topic).",
        "chunk_overhead": chunking.CHUNK_OVERHEAD,
        "payload": hx(payload),
        "transfer_id": hx(chunking.transfer_id_for(payload)),
        "cases": cases,
    }


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
        rows = [(d, round_keys(d, 9).enc_pk, round_keys(d, 9).mask_pk) for d in ids]
        seed = graph_seed(FED, 9, rows)
        graph = neighbour_graph(ids, k, seed)
        cases.append(
            {
                "federation": FED,
                "round": 9,
                "members": [[d, hx(e), hx(m)] for d, e, m in rows],
                "degree": k,
                "graph_seed": hx(seed),
                "neighbours": {u: list(vs) for u, vs in graph.items()},
                "share_index": {u: {v: share_index(graph, u, v) for v in vs} for u, vs in graph.items()},
            }
        )
    return {
        "description": "Graph seeds and SecAgg+ neighbour graphs (Harary over a keyed-hash ring).",
        "cases": cases,
    }


def bundle_vectors() -> dict[str, Any]:
    u, v = round_keys("dev-1", 5), round_keys("dev-2", 5)
    share_b, share_k = drbg("bundle/b", 33), drbg("bundle/k", 33)
    sealed = bundles.seal(u.enc_sk, v.enc_pk, FED, 5, "dev-1", "dev-2", share_b, share_k)
    opened = bundles.open_bundle(v.enc_sk, u.enc_pk, sealed, FED, 5, "dev-1", "dev-2")
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


def bitpack_vectors() -> dict[str, Any]:
    cases = []
    for bits, count in ((1, 13), (3, 11), (7, 9), (8, 5), (12, 7), (16, 4), (20, 5), (31, 3), (32, 3)):
        raw = np.frombuffer(drbg(f"bitpack/{bits}/{count}", 4 * count), dtype="<u4")
        values = (raw & np.uint32((1 << bits) - 1 if bits < 32 else 0xFFFFFFFF)).astype(np.uint32)
        cases.append({"bits": bits, "values": [int(x) for x in values], "packed": hx(pack(values, bits))})
    return {
        "description": "Little-endian bit packing: coordinate i occupies bits [i*b, (i+1)*b).",
        "cases": cases,
        "rejects": [{"bits": 3, "count": 3, "packed": "ff03", "reason": "non-zero padding bits"}],
        "packed_size": [
            {"bits": b, "count": c, "bytes": bitpack.packed_size(c, b)}
            for b, c in ((1, 13), (12, 7), (32, 3))
        ],
    }


def _codec_case(
    name: str, config: CodecConfig, delta: np.ndarray, weight: float, label: str
) -> dict[str, Any]:
    dim = delta.size
    enc = UpdateEncoder(config, dim)
    u = uniforms(label, enc.data_length)
    encoded = enc.encode(delta, weight, _Replay(u))
    # Intermediate values, recomputed with the encoder's own steps, so an implementation can bisect.
    grid = enc.weights.grid(weight)
    cf = clip_factor(delta, config.clip_norm)
    factor = np.float32(cf * (grid / (1 << enc.weights.weight_bits)))
    work = np.zeros(enc.padded_dim, dtype=np.float32)
    np.multiply(delta, factor, out=work[:dim])
    scaled = work.copy()
    if enc.rotate is not None:
        enc.rotate.encode(work)
    rotated = work.copy()
    kept = enc.subsample.encode(work)
    mask = enc.subsample.mask()
    case = {
        "name": name,
        "config": typed(config.to_dict()),
        "dim": dim,
        "delta_f32": f32_hex(delta),
        "weight": weight,
        "uniforms_f64": f64_hex(u),
        "clip_factor": cf,
        "grid_weight": grid,
        "factor_f32": f32_hex(np.array([factor])),
        "scaled_f32": f32_hex(scaled),
        "mixing_dim": enc.rotate.mixing_dim if enc.rotate is not None else None,
        "signs_head_words": _raw_words(config.seed, PURPOSE_SIGNS, 2),
        "signs_tail_words": _raw_words(config.seed, PURPOSE_SIGNS_TAIL, 2),
        "subsample_words": _raw_words(config.seed, PURPOSE_SUBSAMPLE, 4),
        "rotated_f32": f32_hex(rotated),
        "kept_mask": [int(m) for m in mask],
        "kept": kept,
        "scale": enc.scale,
        "limb_bits": enc.weights.limb_bits,
        "limb_count": enc.weights.count,
        "encoded_length": enc.encoded_length,
        "encoded": [int(x) for x in encoded],
        "packed": hx(pack(encoded, config.bits)),
    }
    # Server side: the sum of this encoding and a second one, decoded.
    other = enc.encode(delta[::-1].copy(), 1.0, _Replay(uniforms(label + "/other", enc.data_length)))
    total = (encoded.astype(np.uint64) + other) & np.uint64((1 << config.bits) - 1)
    mean, summed_weight = UpdateDecoder(config, dim).decode(total.astype(np.uint32), 2)
    case["decode"] = {
        "other_encoded": [int(x) for x in other],
        "sum": [int(x) for x in total],
        "contributors": 2,
        "mean_f32": f32_hex(mean),
        "summed_weight": summed_weight,
    }
    return case


def _raw_words(seed: bytes, purpose: int, count: int) -> list[str]:
    return [f"{int(w):016x}" for w in seeded_bits(seed, purpose).random_raw(count)]


def codec_vectors() -> dict[str, Any]:
    seed = drbg("codec/seed", 32)
    rng = np.random.default_rng(int.from_bytes(drbg("codec/delta", 8), "little"))
    small = (rng.standard_normal(10) * 0.05).astype(np.float32)
    # Dyadic values: the squared norm is exact in float64 whatever the summation order, so the clip
    # factor is bit-exact in every implementation.
    dyadic = (np.array([3, -7, 12, 5, -1, 9, 0, -4, 8, 2, 6, -11, 1], dtype=np.float32) / 8).astype(
        np.float32
    )
    seeded_zero = b"\x01\x02\x03\x04" + bytes(28)  # its integer has one 32-bit word (SeedSequence pads)
    cases = [
        _codec_case(
            "rotation, no subsampling, 16 bits, unclipped, d=10",
            CodecConfig(bits=16, clip_norm=1.0, expected_clients=5, seed=seed),
            small,
            0.75,
            "codec/u/1",
        ),
        _codec_case(
            "rotation, subsampling p=0.5, 12 bits, clipped, d=13",
            CodecConfig(bits=12, clip_norm=1.0, expected_clients=3, seed=seed, subsample_rate=0.5),
            dyadic,
            1.0,
            "codec/u/2",
        ),
        _codec_case(
            "no rotation, 20 bits, 8-bit weight grid, d=8 (power of two)",
            CodecConfig(bits=20, clip_norm=2.0, expected_clients=4, seed=seed, rotation=False, weight_bits=8),
            dyadic[:8].copy(),
            0.3,
            "codec/u/3",
        ),
        _codec_case(
            "rotation, short-seed SeedSequence path, 16 bits, d=16",
            CodecConfig(bits=16, clip_norm=0.5, expected_clients=2, seed=seeded_zero, subsample_rate=0.75),
            np.array([*dyadic.tolist(), 0.5, -0.25, 0.125], dtype=np.float32),
            0.5,
            "codec/u/4",
        ),
    ]
    return {
        "description": "Uplink update codec: every intermediate stage for fixed seeds and uniforms.",
        "cases": cases,
    }


def _snapshot_weights(label: str, layout: ModelLayout) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(drbg(label, 8), "little"))
    return (rng.standard_normal(layout.dim) * 0.3).astype(np.float32)


def snapshot_vectors() -> dict[str, Any]:
    agg = identity("aggregator")
    layout = ModelLayout.from_shapes([("0.weight", (8, 16)), ("0.bias", (8,)), ("2.weight", (2, 8))])
    w0 = _snapshot_weights("snapshot/w0", layout)
    w1 = w0.copy()  # one round later only the last tensor moved, so the delta is smaller than the snapshot
    w1[-16:] += np.float32(0.01) * _snapshot_weights("snapshot/step", layout)[-16:]
    cases = []
    for encoding in ("f32", "f16", "q16", "q8"):
        snap = snapshots.make_snapshot(FED, 4, 3, layout, w0, encoding=encoding)
        snap = signing.sign(dataclasses.replace(snap, created_at=1700000100.5), agg)
        decoded = snapshots.snapshot_weights(snap, agg.verify_key)
        cases.append(
            {
                "encoding": encoding,
                "message": hx(encode(snap)),
                "decoded_f32": f32_hex(decoded),
                "decoded_digest": hx(weights_digest(layout.split(decoded))),
            }
        )
    base = snapshots.snapshot_weights(decode_snapshot_msg(cases[2]["message"]))
    full = snapshots.make_snapshot(FED, 5, 4, layout, w1, encoding="q16")
    full = signing.sign(dataclasses.replace(full, created_at=1700000200.5), agg)
    new = snapshots.snapshot_weights(full)
    delta = snapshots.make_delta_snapshot(full, 4, base, new, agg)
    assert delta.encoding == snapshots.DELTA
    assert np.array_equal(snapshots.apply_delta_snapshot(delta, base, agg.verify_key), new)
    return {
        "description": "Signed model snapshots in every body encoding, and one delta (q16 v4 -> q16 v5).",
        "aggregator_public_key": hx(bytes(agg.verify_key)),
        "layout": [[s.name, s.shape] for s in layout.specs],
        "source_f32": f32_hex(w0),
        "cases": cases,
        "delta": {
            "base_case": "q16",
            "message": hx(encode(delta)),
            "full_message": hx(encode(full)),
            "result_f32": f32_hex(new),
        },
    }


def decode_snapshot_msg(message_hex: str) -> ModelSnapshot:
    return decode(bytes.fromhex(message_hex), ModelSnapshot)


def signature_vectors() -> dict[str, Any]:
    agg = identity("aggregator")
    announce = RoundAnnounce(
        FED,
        7,
        3,
        "keys",
        1700000300.0,
        1700000345.0,
        3,
        5,
        {"mode": "secure", "weight_cap": 1000, "codec": CodecConfig(16, 1.0, 5, bytes(32)).to_dict()},
    )
    signed = signing.sign(announce, agg)
    tampered = dataclasses.replace(signed, deadline=1700009999.0)
    cases = [
        {
            "name": "round announcement (map form)",
            "message": hx(encode(signed)),
            "signed_bytes": hx(signing.signing_bytes(signed)),
            "valid": True,
        },
        {"name": "announcement with a changed deadline", "message": hx(encode(tampered)), "valid": False},
    ]
    dev = identity("dev-1")
    advert = AdvertiseKeys(FED, 7, "dev-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    advert = dataclasses.replace(advert, signature=keys.sign(dev, advert.signed_bytes()))
    secagg = [
        {
            "name": "advert",
            "message": hx(encode(advert)),
            "signed_bytes": hx(advert.signed_bytes()),
            "signer": hx(bytes(dev.verify_key)),
            "valid": True,
        },
        {
            "name": "advert replayed into round 8",
            "message": hx(encode(dataclasses.replace(advert, round=8))),
            "signed_bytes": hx(dataclasses.replace(advert, round=8).signed_bytes()),
            "signer": hx(bytes(dev.verify_key)),
            "valid": False,
        },
    ]
    masked = MaskedInput(FED, 7, "dev-1", bytes(range(10)), 16, 5)
    reveal = UnmaskReveal(
        FED, 7, "dev-1", {"dev-3": b"\x01" * 33, "dev-2": b"\x02" * 33}, {"dev-4": b"\x03" * 33}
    )
    notice = SurvivorList(FED, 7, "masked", ["dev-3", "dev-1", "dev-2"])
    for name, msg, key in (
        ("masked input", masked, dev),
        ("unmask reveal", reveal, dev),
        ("survivor list", notice, agg),
    ):
        signed_msg = dataclasses.replace(msg, signature=keys.sign(key, msg.signed_bytes()))
        secagg.append(
            {
                "name": name,
                "message": hx(encode(signed_msg)),
                "signed_bytes": hx(msg.signed_bytes()),
                "signer": hx(bytes(key.verify_key)),
                "valid": True,
            }
        )
    return {
        "description": "Map-form signatures (snapshot, announcement) and canonical-list secagg signatures.",
        "aggregator_public_key": hx(bytes(agg.verify_key)),
        "map_form": cases,
        "secagg": secagg,
    }


# -- a complete secure round -----------------------------------------------------------------------------


def round_vectors() -> dict[str, Any]:
    """Five devices, one of which drops after the share phase; every publication in order."""
    round_id, dim, cap = 7, 10, 100
    devices = ["ann", "bob", "cat", "dan", "eve"]
    dropped = "eve"
    agg = identity("aggregator")
    ids = {d: identity(d) for d in devices}
    directory = {d: bytes(k.verify_key) for d, k in ids.items()}
    topics = Topics(FED)
    codec = CodecConfig(bits=16, clip_norm=1.0, expected_clients=10, seed=drbg("round/codec-seed", 32))
    announce = RoundAnnounce(
        FED,
        round_id,
        3,
        "keys",
        1700000400.0,
        1700000445.0,
        3,
        5,
        {
            "mode": "secure",
            "weight_cap": cap,
            "windows": {"keys": 5.0, "shares": 5.0, "masked": 30.0, "unmask": 5.0},
            "codec": codec.to_dict(),
        },
    )
    announce = signing.sign(announce, agg)
    log: list[dict[str, Any]] = []

    def publish(sender: str, topic: str, msg: Message, retain: bool = False) -> None:
        log.append({"from": sender, "topic": topic, "retain": retain, "payload": hx(encode(msg))})

    publish("aggregator", topics.round, announce, retain=True)
    clients = {d: SecAggClient(FED, d, ids[d], bytes(agg.verify_key), directory) for d in devices}
    for d in devices:
        with mock.patch.object(
            keys.RoundKeys, "generate", classmethod(lambda cls, d=d: round_keys(d, round_id))
        ):
            advert = clients[d].advertise(round_id)
        publish(d, topics.round_msg(round_id, KEYS, d), advert)
    n = len(devices)
    config = CodecConfig(**{**codec.to_dict(), "expected_clients": n})
    length = UpdateEncoder(config, dim).encoded_length
    server = SecAggServer(
        FED,
        round_id,
        agg,
        directory,
        bits=config.bits,
        length=length,
        unpack=lambda m: bitpack.unpack(m.payload, config.bits, length),
    )
    for entry in log[1:]:
        server.add_advert(_decode(entry["payload"], AdvertiseKeys))
    roster = server.make_roster()
    publish("aggregator", topics.roster, roster, retain=True)
    coefficients: dict[str, list[int]] = {}
    for d in devices:
        coefficients[d] = [field_element(f"round/{d}/coef/{i}") for i in range(2 * (roster.threshold - 1))]
        with _coefficients(coefficients[d]):
            sealed = clients[d].on_roster(roster)
        batch = ShareBatch.outgoing(FED, round_id, d, sealed)
        publish(d, topics.round_msg(round_id, SHARES, d), batch)
        for bundle in batch.sent_bundles():
            server.add_shares(bundle)
    u2 = server.close_share_phase()
    for d in u2.devices:
        inbox = ShareBatch.inbox(FED, round_id, d, server.shares_for(d))
        publish("aggregator", topics.inbox(d), inbox)
        for bundle in inbox.received_bundles():
            clients[d].on_shares(bundle)
    publish("aggregator", topics.notice, u2, retain=True)
    inputs: dict[str, dict[str, Any]] = {}
    encoded_sum = np.zeros(length, dtype=np.uint64)
    for i, d in enumerate(devices):
        rng = np.random.default_rng(int.from_bytes(drbg(f"round/{d}/delta", 8), "little"))
        delta = (rng.standard_normal(dim) * 0.1).astype(np.float32)
        examples = 40 + 20 * i
        weight = min(examples / cap, 1.0)
        encoder = UpdateEncoder(config, dim)
        u = uniforms(f"round/{d}/uniforms", encoder.data_length)
        x = encoder.encode(delta, weight, _Replay(u))
        inputs[d] = {
            "delta_f32": f32_hex(delta),
            "num_examples": examples,
            "weight": weight,
            "uniforms_f64": f64_hex(u),
            "encoded": [int(v) for v in x],
        }
        if d == dropped:
            continue
        encoded_sum += x
        y = clients[d].mask(x.copy(), u2)
        inputs[d]["masked"] = [int(v) for v in y]
        masked = clients[d].masked_input(pack(y, config.bits))
        publish(d, topics.round_msg(round_id, MASKED, d), masked)
        server.add_masked(masked)
    u3 = server.close_masked_phase()
    publish("aggregator", topics.notice, u3, retain=True)
    for d in u3.devices:
        reveal = clients[d].on_survivors(u3)
        publish(d, topics.round_msg(round_id, UNMASK, d), reveal)
        server.add_reveal(reveal)
    total = server.unmask()
    assert np.array_equal(total, (encoded_sum & np.uint64((1 << config.bits) - 1)).astype(np.uint32))
    mean, summed_weight = UpdateDecoder(config, dim).decode(total, len(u3.devices))
    secrets = {
        d: {
            "identity_seed": hx(bytes(ids[d])),
            "enc_sk": hx(bytes(round_keys(d, round_id).enc_sk)),
            "mask_sk": hx(round_keys(d, round_id).mask_sk),
            "self_mask": hx(round_keys(d, round_id).self_mask),
            "shamir_coefficients": [hex(c)[2:] for c in coefficients[d]],
        }
        for d in devices
    }
    return {
        "description": (
            "A complete secure round: 5 devices, 'eve' drops after the share phase. 'messages' lists every "
            "publication in order; a device implementation fed the same secrets, coefficients and uniforms "
            "must produce the same payloads byte for byte."
        ),
        "federation": FED,
        "round": round_id,
        "dim": dim,
        "aggregator_identity_seed": hx(bytes(agg)),
        "directory": {d: hx(k) for d, k in directory.items()},
        "devices": devices,
        "dropped": dropped,
        "secrets": secrets,
        "inputs": inputs,
        "messages": log,
        "sum": [int(v) for v in total],
        "mean_f32": f32_hex(mean),
        "summed_weight": summed_weight,
    }


def _decode(payload_hex: str, cls: type[Message]) -> Any:
    return decode(bytes.fromhex(payload_hex), cls)


# -- driver ----------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "wire": wire_vectors,
    "topics": topic_vectors,
    "chunking": chunking_vectors,
    "crypto": crypto_vectors,
    "prg": prg_vectors,
    "shamir": shamir_vectors,
    "graph": graph_vectors,
    "bundles": bundle_vectors,
    "bitpack": bitpack_vectors,
    "codec": codec_vectors,
    "snapshot": snapshot_vectors,
    "signatures": signature_vectors,
    "round": round_vectors,
}


def generate() -> dict[str, dict[str, Any]]:
    """Every section's vectors, keyed by file stem."""
    return {name: {"vectors_version": VECTORS_VERSION, **build()} for name, build in SECTIONS.items()}


def render(vectors: dict[str, Any]) -> str:
    """The exact file text of one section (stable key order, trailing newline)."""
    return json.dumps(vectors, indent=1, ensure_ascii=True) + "\n"
