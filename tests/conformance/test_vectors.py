"""The Python implementation against the committed conformance vectors in spec/vectors/.

Two kinds of check: the generator must reproduce the committed files byte for byte (so a wire change
shows up as a diff someone has to commit on purpose), and each vector is checked in the *other*
direction from the one the generator computed it (decode what was encoded, reassemble what was split,
reconstruct what was shared, verify what was signed, replay a recorded round into a fresh aggregator).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from unittest import mock

import nacl.public
import nacl.signing
import numpy as np
import pytest

from shared import signing, snapshots
from shared.chunking import Reassembler
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, bitpack
from shared.conformance import generate, render
from shared.conformance.vectors import _coefficients, _Replay
from shared.errors import CodecError, ProtocolError, SecAggError, WireError
from shared.layout import ModelLayout
from shared.secagg import SecAggClient, SecAggServer, bundles, keys, prg, shamir
from shared.secagg.graph import graph_seed, neighbour_graph
from shared.secagg.roster import compact
from shared.topics import Topics, check_id
from shared.wire import ModelSnapshot, RoundAnnounce, decode, encode, registered_types
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import AdvertiseKeys, MaskedInput, ShareBatch, SurvivorList, UnmaskReveal

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text())


def untyped(value):
    """Typed JSON back to Python values (inverse of ``vectors.typed``)."""
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        if set(value) == {"float"}:
            return float(value["float"])
        return {k: untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untyped(v) for v in value]
    return value


def f32(hex_text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_text), dtype="<f4")


def test_committed_vectors_are_what_the_code_generates():
    for name, vectors in generate().items():
        path = VECTORS / f"{name}.json"
        assert path.exists(), f"{path} missing: run python -m shared.conformance --out spec/vectors"
        assert path.read_text() == render(vectors), f"{path} differs from the code's output"


def test_generation_is_deterministic():
    first, second = generate(), generate()
    assert {k: render(v) for k, v in first.items()} == {k: render(v) for k, v in second.items()}


def test_wire_cases_decode_to_their_fields_and_re_encode():
    vectors = load("wire")
    types = {case["type"] for case in vectors["cases"]}
    assert types == set(registered_types()), "every registered message type has a vector"
    for case in vectors["cases"]:
        raw = bytes.fromhex(case["msgpack"])
        msg = decode(raw)
        assert case["type"] == msg.TYPE
        fields = untyped(case["fields"])
        assert json.dumps(untyped_plain(msg), sort_keys=True, default=repr) == json.dumps(
            fields, sort_keys=True, default=repr
        )
        assert encode(msg) == raw


def untyped_plain(msg) -> dict:
    return {f.name: _plain(getattr(msg, f.name)) for f in dataclasses.fields(msg)}


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def test_wire_rejects_raise_wire_error():
    for case in load("wire")["rejects"]:
        with pytest.raises(WireError):
            decode(bytes.fromhex(case["msgpack"]))


def test_topics():
    vectors = load("topics")
    t = Topics(vectors["federation"])
    d, r = vectors["device"], vectors["round"]
    topics = vectors["topics"]
    assert t.round_msg(r, "masked", d) == topics["masked"]
    assert t.parse_round(topics["masked_chunk_1"]).chunk == 1
    assert t.parse_inbox(d, topics["inbox_chunk_2"]) == 2
    assert t.parse_model_chunk(topics["model_chunk_3"]) == 3
    for value in vectors["valid_ids"]:
        assert check_id(value, "id") == value
    for value in vectors["invalid_ids"]:
        with pytest.raises(ValueError):
            check_id(value, "id")
    for topic in vectors["invalid_round_topics"]:
        with pytest.raises(WireError):
            t.parse_round(topic)
    for suffix in vectors["invalid_chunk_suffixes"]:
        with pytest.raises(WireError):
            t.parse_inbox(d, f"{t.inbox(d)}/c/{suffix}")
    limit = vectors["max_chunk_index"]
    assert t.parse_delta_chunk(f"{t.delta}/c/{limit}") == limit
    assert t.parse_round(t.round_msg(vectors["max_round_id"], "keys", d)).round_id == vectors["max_round_id"]


def test_chunk_frames_reassemble_in_any_order():
    vectors = load("chunking")
    payload = bytes.fromhex(vectors["payload"])
    expected = decode(payload)
    for case in vectors["cases"]:
        frames = [(f["chunk"], bytes.fromhex(f["payload"])) for f in case["frames"]]
        if len(frames) == 1:
            assert frames[0] == (None, payload)
            continue
        random.Random(case["limit"]).shuffle(frames)
        reassembler = Reassembler()
        results = [reassembler.feed("k", index, data, 1 << 20) for index, data in frames + frames]
        assert [r for r in results if r is not None] == [expected]
        assert all(len(data) <= case["limit"] for _, data in frames)


def test_crypto():
    vectors = load("crypto")
    for case in vectors["ed25519"]:
        key = nacl.signing.SigningKey(bytes.fromhex(case["seed"]))
        assert bytes(key.verify_key).hex() == case["public_key"]
        keys.verify(
            bytes(key.verify_key), bytes.fromhex(case["message"]), bytes.fromhex(case["signature"]), "v"
        )
    for case in vectors["x25519"]:
        assert keys.mask_public_key(bytes.fromhex(case["secret_key"])).hex() == case["public_key"]
    p = vectors["pair_seed"]
    seed = keys.pair_seed(
        bytes.fromhex(p["b_mask_sk"]),
        bytes.fromhex(p["a_mask_pk"]),
        p["federation"],
        p["round"],
        p["b"],
        p["a"],
    )
    assert seed.hex() == p["seed"]
    with pytest.raises(SecAggError):
        keys.pair_seed(bytes.fromhex(p["a_mask_sk"]), bytes(32), p["federation"], p["round"], p["a"], p["b"])
    for case in vectors["self_mask_commitment"]:
        assert keys.commit_self_mask(bytes.fromhex(case["seed"])).hex() == case["commitment"]


def test_prg():
    vectors = load("prg")
    seed = bytes.fromhex(vectors["seed"])
    for case in vectors["chunk_seeds"]:
        assert prg.chunk_seed(seed, case["index"]).hex() == case["chunk_seed"]
    for case in vectors["expansions"]:
        values = prg.expand_chunk(seed, case["chunk"], case["coords"], case["bits"])
        assert [int(v) for v in values] == case["values"]
    c = vectors["combined"]
    plus, minus = [bytes.fromhex(s) for s in c["plus"]], [bytes.fromhex(s) for s in c["minus"]]
    full = prg.combined_mask_parallel(plus, minus, c["bits"], c["length"], workers=2)
    assert hashlib.sha256(full.astype("<u4").tobytes()).hexdigest() == c["sha256_u32le"]
    w = c["window"]
    assert [int(v) for v in prg.combined_mask(plus, minus, c["bits"], w["start"], w["stop"])] == w["values"]


def test_shamir_reconstructs_and_split_replays():
    vectors = load("shamir")
    assert int(vectors["prime"], 16) == shamir.PRIME
    for case in vectors["cases"]:
        shares = [bytes.fromhex(s) for s in case["shares"]]
        subset = {x: shares[x - 1] for x in case["reconstruct_from_x"]}
        assert shamir.reconstruct(subset, case["threshold"]).hex() == case["secret"]
        with _coefficients([int(c, 16) for c in case["coefficients"]]):
            again = shamir.split(bytes.fromhex(case["secret"]), case["threshold"], case["holders"])
        assert [s.hex() for s in again] == case["shares"]
    lag = vectors["lagrange_at_zero"]
    assert [hex(c)[2:] for c in shamir.lagrange_at_zero(lag["xs"])] == lag["coefficients"]


def test_graph():
    for case in load("graph")["cases"]:
        rows = [(d, bytes.fromhex(g)) for d, g in case["members"]]
        for advert, (_, digest) in zip(case["adverts"], rows, strict=True):
            body = bytes.fromhex(advert["signed_bytes"]) + bytes.fromhex(advert["signature"])
            assert hashlib.blake2b(body, digest_size=16, person=b"fedmq.sa.advd1").digest() == digest
        seed = graph_seed(case["federation"], case["round"], list(reversed(rows)))  # order-free
        assert seed.hex() == case["graph_seed"]
        graph = neighbour_graph([r[0] for r in rows], case["degree"], seed)
        assert {u: list(v) for u, v in graph.items()} == case["neighbours"]


def test_bundle_opens_only_under_its_binding():
    v = load("bundles")
    sk = nacl.public.PrivateKey(bytes.fromhex(v["recipient_enc_sk"]))
    args = (v["federation"], v["round"], v["sender"])
    opened = bundles.open_bundle(
        sk, bytes.fromhex(v["sender_enc_pk"]), bytes.fromhex(v["ciphertext"]), *args, recipient=v["recipient"]
    )
    assert opened.self_mask_share.hex() == v["self_mask_share"]
    assert opened.mask_key_share.hex() == v["mask_key_share"]
    with pytest.raises(SecAggError):
        bundles.open_bundle(
            sk,
            bytes.fromhex(v["sender_enc_pk"]),
            bytes.fromhex(v["ciphertext"]),
            v["federation"],
            v["wrong_binding_round"],
            v["sender"],
            recipient=v["recipient"],
        )


def test_bitpack():
    vectors = load("bitpack")
    for case in vectors["cases"]:
        values = bitpack.unpack(bytes.fromhex(case["packed"]), case["bits"], len(case["values"]))
        assert [int(x) for x in values] == case["values"]
    for case in vectors["rejects"]:
        with pytest.raises(CodecError):
            bitpack.unpack(bytes.fromhex(case["packed"]), case["bits"], case["count"])


def test_codec_encode_and_decode():
    for case in load("codec")["cases"]:
        config = CodecConfig.from_dict(untyped(case["config"]))
        uniforms = np.frombuffer(bytes.fromhex(case["uniforms_f64"]), dtype="<f8")
        encoder = UpdateEncoder(config, case["dim"])
        assert encoder.scale == case["scale"]
        encoded = encoder.encode(f32(case["delta_f32"]).copy(), case["weight"], _Replay(uniforms))
        assert [int(x) for x in encoded] == case["encoded"], case["name"]
        assert bitpack.pack(encoded, config.bits).hex() == case["packed"]
        d = case["decode"]
        mean, weight = UpdateDecoder(config, case["dim"]).decode(np.array(d["sum"], dtype=np.uint32), 2)
        assert mean.tobytes().hex() == d["mean_f32"] and weight == d["summed_weight"]


def test_snapshots_decode_verify_and_delta():
    v = load("snapshot")
    key = nacl.signing.VerifyKey(bytes.fromhex(v["aggregator_public_key"]))
    for case in v["cases"]:
        snap = decode(bytes.fromhex(case["message"]), ModelSnapshot)
        weights = snapshots.snapshot_weights(snap, key)
        assert weights.tobytes().hex() == case["decoded_f32"]
        forged = dataclasses.replace(snap, round_id=snap.round_id + 1)
        with pytest.raises(ProtocolError):
            snapshots.snapshot_weights(forged, key)
    base = f32(next(c for c in v["cases"] if c["encoding"] == v["delta"]["base_case"])["decoded_f32"])
    delta = decode(bytes.fromhex(v["delta"]["message"]), ModelSnapshot)
    result = snapshots.apply_delta_snapshot(delta, base.copy(), key)
    assert result.tobytes().hex() == v["delta"]["result_f32"]
    assert ModelLayout.from_wire(delta.layout).dim == base.size
    with pytest.raises(CodecError):
        snapshots.apply_delta_snapshot(delta, base + np.float32(1.0), key)


def test_signatures():
    v = load("signatures")
    key = nacl.signing.VerifyKey(bytes.fromhex(v["aggregator_public_key"]))
    for case in v["map_form"]:
        msg = decode(bytes.fromhex(case["message"]), RoundAnnounce)
        if case["valid"]:
            assert signing.signing_bytes(msg).hex() == case["signed_bytes"]
            signing.verify(msg, key)
        else:
            with pytest.raises(ProtocolError):
                signing.verify(msg, key)
    for case in v["secagg"]:
        msg = decode(bytes.fromhex(case["message"]))
        assert msg.signed_bytes().hex() == case["signed_bytes"]
        signer = bytes.fromhex(case["signer"])
        if case["valid"]:
            keys.verify(signer, msg.signed_bytes(), msg.signature, case["name"])
        else:
            with pytest.raises(SecAggError):
                keys.verify(signer, msg.signed_bytes(), msg.signature, case["name"])


def test_recorded_round_replays_into_a_fresh_aggregator():
    v = load("round")
    agg = nacl.signing.SigningKey(bytes.fromhex(v["aggregator_identity_seed"]))
    directory = {d: bytes.fromhex(k) for d, k in v["directory"].items()}
    t = Topics(v["federation"])
    roster = decode(
        bytes.fromhex(next(m["payload"] for m in v["messages"] if m["topic"] == t.roster)), CompactRoster
    )
    server = SecAggServer(
        v["federation"],
        v["round"],
        agg,
        directory,
        bits=roster.bits,
        length=roster.length,
        unpack=lambda m: bitpack.unpack(m.payload, roster.bits, roster.length),
    )
    for m in v["messages"]:
        if m["from"] == "aggregator":
            continue
        msg = decode(bytes.fromhex(m["payload"]))
        parsed = t.parse_round(m["topic"])
        assert parsed.sender == m["from"] and parsed.round_id == v["round"]
        if isinstance(msg, AdvertiseKeys):
            server.add_advert(msg)
        elif isinstance(msg, ShareBatch):
            if server.roster is None:
                assert compact(server.make_roster(), agg) == roster  # the aggregator's output is reproducible
            for bundle in msg.sent_bundles():
                server.add_shares(bundle)
        elif isinstance(msg, MaskedInput):
            if server.phase == "share":
                server.close_share_phase()
            server.add_masked(msg)
        elif isinstance(msg, UnmaskReveal):
            if server.phase == "mask":
                server.close_masked_phase()
            server.add_reveal(msg)
    total = server.unmask()
    assert [int(x) for x in total] == v["sum"]
    survivors = [d for d in v["devices"] if d != v["dropped"]]
    expected = np.sum([v["inputs"][d]["encoded"] for d in survivors], axis=0) % (1 << roster.bits)
    assert [int(x) for x in expected] == v["sum"]


def test_recorded_round_device_payloads_are_reproducible():
    """A fresh Python device fed the recorded secrets emits exactly the recorded payloads."""
    v = load("round")
    fed, round_id = v["federation"], v["round"]
    t = Topics(fed)
    directory = {d: bytes.fromhex(k) for d, k in v["directory"].items()}
    agg_pk = bytes(nacl.signing.SigningKey(bytes.fromhex(v["aggregator_identity_seed"])).verify_key)
    sent = {(m["from"], m["topic"]): bytes.fromhex(m["payload"]) for m in v["messages"]}
    by_topic = {}
    for m in v["messages"]:
        by_topic.setdefault(m["topic"], []).append(bytes.fromhex(m["payload"]))
    roster = decode(by_topic[t.roster][0], CompactRoster)
    u2, u3 = (decode(p, SurvivorList) for p in by_topic[t.notice])
    announce = decode(by_topic[t.round][0], RoundAnnounce)
    config = announce.plan.codec_for(len(roster.devices))
    for d in v["devices"]:
        s = v["secrets"][d]
        round_keys = keys.RoundKeys(
            nacl.public.PrivateKey(bytes.fromhex(s["enc_sk"])),
            bytes.fromhex(s["mask_sk"]),
            bytes.fromhex(s["self_mask"]),
        )
        client = SecAggClient(
            fed, d, nacl.signing.SigningKey(bytes.fromhex(s["identity_seed"])), agg_pk, directory
        )
        with mock.patch.object(keys.RoundKeys, "generate", classmethod(lambda cls, k=round_keys: k)):
            advert = client.advertise(round_id)
        assert encode(advert) == sent[(d, t.round_msg(round_id, "keys", d))]
        with _coefficients([int(c, 16) for c in s["shamir_coefficients"]]):
            neighbour_keys = decode(by_topic[t.inbox(d)][0], NeighbourKeys)  # then its share batch
            batch = ShareBatch.outgoing(fed, round_id, d, client.on_compact_roster(roster, neighbour_keys))
        batch = dataclasses.replace(batch, signature=client.sign_digests(round_id, batch.digests))
        assert encode(batch) == sent[(d, t.round_msg(round_id, "shares", d))]
        for bundle in decode(sent[("aggregator", t.inbox(d))], ShareBatch).received_bundles():
            client.on_shares(bundle)
        inputs = v["inputs"][d]
        encoder = UpdateEncoder(config, v["dim"])
        uniforms = np.frombuffer(bytes.fromhex(inputs["uniforms_f64"]), dtype="<f8")
        x = encoder.encode(f32(inputs["delta_f32"]).copy(), inputs["weight"], _Replay(uniforms))
        assert [int(a) for a in x] == inputs["encoded"]
        if d == v["dropped"]:
            continue
        y = client.mask(x, u2)
        masked = client.masked_input(bitpack.pack(y, config.bits))
        assert encode(masked) == sent[(d, t.round_msg(round_id, "masked", d))]
        assert encode(client.on_survivors(u3)) == sent[(d, t.round_msg(round_id, "unmask", d))]
