"""Downlink snapshots: round trip per encoding, hash verification, bit-exact deltas."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from shared.codec.snapshot import apply_delta, decode_snapshot, encode_delta, encode_snapshot, weights_digest
from shared.errors import CodecError


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((16, 3, 3, 3)) * 0.1).astype(np.float32),
        "conv.bias": np.zeros(16, dtype=np.float32),
        "fc.weight": (rng.standard_normal((10, 400)) * 0.05).astype(np.float32),
        "scalar": np.array(0.5, dtype=np.float32),
    }


@pytest.mark.parametrize(
    ("encoding", "tolerance"), [("f32", 0.0), ("f16", 1e-3), ("q16", 1e-4), ("q8", 3e-3)]
)
def test_round_trip(encoding: str, tolerance: float) -> None:
    weights = model(0)
    data, digest = encode_snapshot(weights, encoding)
    decoded = decode_snapshot(data)
    assert list(decoded) == list(weights)
    assert weights_digest(decoded) == digest
    for name, tensor in weights.items():
        assert decoded[name].dtype == np.float32 and decoded[name].shape == tensor.shape
        np.testing.assert_allclose(decoded[name], tensor, atol=tolerance)


def test_per_tensor_encodings_and_size() -> None:
    weights = model(1)
    small, _ = encode_snapshot(weights, {"fc.weight": "q8", "conv.bias": "f32"})
    full, _ = encode_snapshot(weights, "f32")
    assert len(small) < len(full) / 2


def test_tampering_is_detected() -> None:
    data, _ = encode_snapshot(model(2), "q8")
    body = msgpack.unpackb(data, raw=False)
    body["tensors"][0]["scale"] *= 1.0001
    with pytest.raises(CodecError, match="hash mismatch"):
        decode_snapshot(msgpack.packb(body, use_bin_type=True))
    body = msgpack.unpackb(data, raw=False)
    body["sha256"] = bytes(32)
    with pytest.raises(CodecError, match="hash mismatch"):
        decode_snapshot(msgpack.packb(body, use_bin_type=True))
    for garbage in (b"", b"\xc1", data[:-5], msgpack.packb({"fmt": "other"})):
        with pytest.raises(CodecError):
            decode_snapshot(garbage)


@pytest.mark.parametrize("encoding", ["f16", "q8", "q16", "f32"])
def test_delta_reproduces_the_next_version_bit_exactly(encoding: str) -> None:
    rng = np.random.default_rng(3)
    master = model(3)
    previous = decode_snapshot(encode_snapshot(master, encoding)[0])
    for _ in range(3):  # a chain of versions v-1 -> v
        master = {
            k: np.asarray(v + (rng.standard_normal(v.shape) * 1e-3).astype(np.float32))
            for k, v in master.items()
        }
        data, digest = encode_snapshot(master, encoding)
        current = decode_snapshot(data)
        rebuilt = apply_delta(previous, encode_delta(previous, current))
        assert weights_digest(rebuilt) == digest
        for name in current:
            assert np.array_equal(rebuilt[name].view(np.uint32), current[name].view(np.uint32))
        previous = rebuilt


def test_delta_refuses_wrong_base_and_tampering() -> None:
    first = decode_snapshot(encode_snapshot(model(4))[0])
    second = decode_snapshot(encode_snapshot(model(5))[0])
    delta = encode_delta(first, second)
    with pytest.raises(CodecError, match="base hash"):
        apply_delta(second, delta)
    body = msgpack.unpackb(delta, raw=False)
    body["sha256"] = bytes(32)
    with pytest.raises(CodecError, match="hash mismatch"):
        apply_delta(first, msgpack.packb(body, use_bin_type=True))
    with pytest.raises(CodecError):
        encode_delta(first, {"other": np.zeros(3, dtype=np.float32)})
