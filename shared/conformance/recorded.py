"""The recorded secure round: five devices, one dropping after the share phase, every publication."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from unittest import mock

import numpy as np

from shared import signing
from shared.codec import CodecConfig, UpdateDecoder, UpdateEncoder, bitpack, pack
from shared.conformance.common import (
    FED,
    _coefficients,
    _replay,
    drbg,
    f32_hex,
    f64_hex,
    field_element,
    hx,
    identity,
    round_keys,
    uniforms,
)
from shared.plan import PhaseWindows, RoundPlan
from shared.secagg import SecAggClient, SecAggServer, keys
from shared.secagg.roster import compact, neighbour_keys
from shared.topics import KEYS, MASKED, SHARES, UNMASK, Topics
from shared.wire import (
    Message,
    RoundAnnounce,
    decode,
    encode,
)
from shared.wire.secagg import (
    AdvertiseKeys,
    ShareBatch,
)

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
    plan = RoundPlan(mode="secure", weight_cap=cap, codec=codec,
                     windows=PhaseWindows(keys=5.0, shares=5.0, masked=30.0, unmask=5.0))  # fmt: skip
    announce = RoundAnnounce(federation=FED, round_id=round_id, base_version=3, phase="keys",
                             opened_at=1700000400.0, deadline=1700000445.0, min_clients=3, target_clients=5,
                             plan=plan)  # fmt: skip
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
    config = plan.codec_for(n)
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
    listed = compact(roster, agg)  # the compact roster (retained) and each device's neighbour keys
    publish("aggregator", topics.roster, listed, retain=True)
    slices = {d: neighbour_keys(roster, server.graph[d], d) for d in devices}
    for d in devices:
        publish("aggregator", topics.inbox(d), slices[d])
    coefficients: dict[str, list[int]] = {}
    for d in devices:
        coefficients[d] = [field_element(f"round/{d}/coef/{i}") for i in range(2 * (roster.threshold - 1))]
        with _coefficients(coefficients[d]):
            sealed = clients[d].on_compact_roster(listed, slices[d])
        batch = ShareBatch.outgoing(FED, round_id, d, sealed)
        batch = replace(batch, signature=clients[d].sign_digests(round_id, batch.digests))  # signed digests
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
        x = encoder.encode(delta, weight, _replay(u))
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
