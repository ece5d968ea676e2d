"""Vector sections for messages: wire encodings (and plan rejects), topics, chunking."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from shared import chunking, signing
from shared.codec import CodecConfig
from shared.conformance.common import FED, drbg, hx, identity, message_case
from shared.enrolment import EnrolledDevice, EnrolmentList
from shared.plan import PhaseWindows, RoundPlan
from shared.secagg import keys
from shared.staleness import StalenessPolicy
from shared.topics import KEYS, MASKED, MAX_CHUNK_INDEX, MAX_ROUND_ID, SHARES, UNMASK, UPDATE, Topics
from shared.wire import (
    Chunk,
    ChunkManifest,
    ModelSnapshot,
    ModelUpdate,
    ParamSpec,
    Presence,
    RoundAnnounce,
    RoundResult,
    encode,
)
from shared.wire.roster import CompactRoster, NeighbourKeys
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
from shared.wire.seeds import InconsistencyProof, SeedRequest, SeedReveal

# -- sections --------------------------------------------------------------------------------------------


def plan_rejects() -> list[dict[str, str]]:
    """Announcements a decoder must refuse for their plan (shared/plan.py): each one field off."""
    plan = RoundPlan(mode="secure", windows=PhaseWindows(), codec=CodecConfig(16, 1.0, 4, bytes(32)))
    announce = RoundAnnounce(federation=FED, round_id=1, base_version=0, phase="keys", opened_at=1700000000.0,
                             deadline=1700000045.0, min_clients=2, target_clients=4, plan=plan)  # fmt: skip
    body = msgpack.unpackb(encode(announce), raw=False)

    def changed(reason: str, edit: Callable[[dict[str, Any]], None]) -> dict[str, str]:
        copy = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)
        edit(copy)
        return {"reason": reason, "msgpack": hx(msgpack.packb(copy, use_bin_type=True))}

    return [
        changed("plan of another version", lambda b: b["plan"].update(version=2)),
        changed("untyped config map instead of a plan", lambda b: b.update(config={"mode": "secure"})),
        changed("secure plan without a codec", lambda b: b["plan"].update(codec=None)),
        changed("phase window out of range", lambda b: b["plan"]["windows"].update(masked=-1.0)),
        changed("a block named twice", lambda b: b["plan"].update(blocks=["0", "0"])),
    ]


def enrolment_list() -> EnrolmentList:
    """The retained ``fl/<fed>/enrolment`` message: signed over its encoding with an empty signature."""
    unsigned = EnrolmentList(
        FED, b"\x0c" * 16, 7, 1700000003.5,
        [EnrolledDevice("dev-1", bytes(identity("dev-1").verify_key)),
         EnrolledDevice("dev-2", bytes(identity("dev-2").verify_key))],
        ["dev-0"],
    )  # fmt: skip
    signed = identity("authority").sign(encode(unsigned)).signature
    return dataclasses.replace(unsigned, signature=signed)


def wire_vectors() -> dict[str, Any]:
    agg = identity("aggregator")
    dev = identity("dev-1")
    layout = [ParamSpec("fc.weight", [2, 3]), ParamSpec("fc.bias", [2])]
    body = np.arange(8, dtype="<f4").tobytes()
    snap = ModelSnapshot(FED, 3, 2, layout, "f32", body, hashlib.sha256(body).digest(), 1700000000.25)
    plan = RoundPlan(
        mode="secure",
        weight_cap=1000,
        windows=PhaseWindows(keys=5.0, masked=30.0),
        codec=CodecConfig(16, 1.0, 10, bytes(range(32))),
        staleness=StalenessPolicy("fedbuff", 4, 1.0),
        blocks=("0", "2"),
    )
    announce = RoundAnnounce(federation=FED, round_id=5, base_version=3, phase="keys", opened_at=1700000000.0,
                             deadline=1700000045.5, min_clients=3, target_clients=10, plan=plan)  # fmt: skip
    advert = AdvertiseKeys(FED, 5, "dev-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    member = RosterMember("dev-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64)
    roster = Roster(FED, 5, [member], b"\x05" * 32, 4, 3, 16, 12)
    digests = b"\x0d" * 16 + b"\x0e" * 16
    compact = CompactRoster(FED, 5, ["dev-1", "dev-2"], digests, b"\x05" * 32, 4, 3, 16, 12)
    slice_ = NeighbourKeys.of(FED, 5, "dev-2", [member])
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
        message_case("secagg compact roster (ids, 16-byte advert digests; signature a placeholder)", compact),
        message_case("secagg neighbour keys (signatures are placeholders)", slice_),
        message_case("secagg share batch", batch),
        message_case(
            "secagg encrypted shares (registered, in-memory only: bundles travel in share batches)",
            EncryptedShares(FED, 5, "dev-1", "dev-2", b"\x06" * 82),
        ),
        message_case("secagg survivor list", notice),
        message_case("secagg masked input", masked),
        message_case("secagg unmask reveal", reveal),
        message_case("secagg masked input, refusal report", dataclasses.replace(masked, refused=["dev-3"])),
        message_case("secagg seed request (signatures are placeholders)", SeedRequest(FED, 5, ["dev-3"], [
            InconsistencyProof("dev-3", {"dev-1": b"\x0a" * 32, "dev-2": b"\x0b" * 32}, b"\x0c" * 64,
                               {"dev-1": b"\x0d" * 33}, b"\x0f" * 32, b"\x10" * 64)])),
        message_case("secagg seed reveal", SeedReveal(FED, 5, "dev-1", {"dev-3": b"\x0e" * 32})),
        message_case("enrolment list, signed by the enrolment authority", enrolment_list()),
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
        *plan_rejects(),
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
