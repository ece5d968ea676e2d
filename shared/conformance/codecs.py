"""Vector sections for bit packing, the uplink codec, snapshots and map-form signatures."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from shared import signing, snapshots
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, bitpack, pack
from shared.codec.clip import clip_factor
from shared.codec.rotation import PURPOSE_SIGNS, PURPOSE_SIGNS_TAIL, PURPOSE_SUBSAMPLE, seeded_bits
from shared.codec.snapshot import weights_digest
from shared.conformance.common import FED, _replay, drbg, f32_hex, f64_hex, hx, identity, typed, uniforms
from shared.layout import ModelLayout
from shared.plan import PhaseWindows, RoundPlan
from shared.secagg import keys
from shared.wire import (
    ModelSnapshot,
    RoundAnnounce,
    decode,
    encode,
)
from shared.wire.secagg import (
    AdvertiseKeys,
    MaskedInput,
    SurvivorList,
    UnmaskReveal,
)


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
    encoded = enc.encode(delta, weight, _replay(u))
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
    other = enc.encode(delta[::-1].copy(), 1.0, _replay(uniforms(label + "/other", enc.data_length)))
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
    plan = RoundPlan(
        mode="secure", weight_cap=1000, windows=PhaseWindows(), codec=CodecConfig(16, 1.0, 5, bytes(32))
    )
    announce = RoundAnnounce(federation=FED, round_id=7, base_version=3, phase="keys", opened_at=1700000300.0,
                             deadline=1700000345.0, min_clients=3, target_clients=5, plan=plan)  # fmt: skip
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
