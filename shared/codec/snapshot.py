"""Compact downlink model snapshots and bit-exact deltas (docs/compression.md §5-6, docs/protocol.md §6).

A snapshot is an ordered ``dict[str, float32 array]`` encoded tensor by tensor:

* ``"f16"`` — IEEE half precision (decoded: ``float16 -> float32``, exact);
* ``"q16"`` / ``"q8"`` — symmetric integers with one float32 scale per tensor,
  ``scale = max|x| / (2^(k-1) - 1)``, ``q = round(x / scale)``; decoded: ``float32(q) * scale``
  (one correctly rounded IEEE multiply, identical on every device);
* ``"f32"`` — raw, lossless (small tensors such as norms and biases, or when exactness is required).

The decoded weights are *defined* as the output of :func:`decode_snapshot`; the snapshot carries the
SHA-256 of those decoded weights (:func:`weights_digest`) and the decoder refuses anything that does not
reproduce it. So a device never trains on weights other than the ones the aggregator published.

Deltas: :func:`encode_delta` works on two *decoded* weight dicts. Per tensor it takes the float32 bit
patterns as uint32 and stores ``(new - old) mod 2^32``, split into four byte planes (low to high) before
zstd. Unchanged coordinates give zero words, and for small changes the high planes (sign, exponent) are
almost all zero, so the delta compresses far better than a full snapshot, yet :func:`apply_delta` rebuilds
the new decoded weights *bit-exactly* by modular addition — whatever quantizer produced them. The delta
names the digest of the base it applies to and of the result; a device holding a different base gets a
:class:`CodecError` (fetch the full snapshot).

Master-copy consistency: the aggregator may keep a float32 master for accumulation (so updates smaller
than a quantization step are not lost), but it must remember the *decoded* snapshot it last published and
compute the next delta from that decoded copy to the new decoded copy — never from its float master.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import zstandard

from shared.errors import CodecError

FORMAT = "fedmq.snapshot"
DELTA_FORMAT = "fedmq.snapshot-delta"
VERSION = 1
ENCODINGS = ("f16", "q16", "q8", "f32")
#: Largest decoded tensor and snapshot accepted (bounded decoding, docs/protocol.md §2.1).
MAX_TENSOR_BYTES = 1 << 30
MAX_PAYLOAD_BYTES = 1 << 30
MAX_TENSORS = 100_000
ZSTD_LEVEL = 3

_CODE_DTYPE: dict[str, np.dtype[Any]] = {
    "f16": np.dtype("<f2"), "q16": np.dtype("<i2"), "q8": np.dtype("i1"), "f32": np.dtype("<f4")
}  # fmt: skip


def weights_digest(weights: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over names, shapes and float32 little-endian bytes of every tensor, in order.

    Per tensor: ``u32 len(name)``, UTF-8 name, ``u32 ndim``, ``u64`` per dimension, then the data.
    """
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        array = np.ascontiguousarray(tensor, dtype="<f4")
        encoded_name = name.encode("utf-8")
        digest.update(struct.pack("<I", len(encoded_name)) + encoded_name)
        digest.update(struct.pack("<I", array.ndim) + b"".join(struct.pack("<Q", n) for n in array.shape))
        digest.update(array.tobytes())
    return digest.digest()


def _quantize_tensor(tensor: np.ndarray, encoding: str) -> tuple[np.ndarray, float]:
    if encoding == "f16":
        if np.abs(tensor).max(initial=0.0) > np.finfo(np.float16).max:
            raise CodecError("tensor exceeds the float16 range; use 'q16' or 'f32'")
        return tensor.astype("<f2"), 1.0
    if encoding == "f32":
        return tensor.astype("<f4"), 1.0
    levels = 127 if encoding == "q8" else 32767
    peak = float(np.abs(tensor).max(initial=0.0))
    scale = float(np.float32(peak / levels)) if peak > 0 else 1.0
    codes = np.clip(np.rint(tensor.astype(np.float64) / scale), -levels, levels)
    return codes.astype(_CODE_DTYPE[encoding]), scale


def _dequantize(codes: np.ndarray, encoding: str, scale: float) -> np.ndarray:
    floats: np.ndarray = codes.astype(np.float32)
    if encoding in ("f16", "f32"):
        return floats
    scaled: np.ndarray = floats * np.float32(scale)
    return scaled


def _check_weights(weights: Mapping[str, np.ndarray]) -> None:
    for name, tensor in weights.items():
        if not isinstance(name, str):
            raise CodecError(f"tensor names must be strings, got {name!r}")
        if not isinstance(tensor, np.ndarray) or tensor.dtype != np.float32:
            raise CodecError(f"tensor {name!r} must be a float32 numpy array")
        if not np.isfinite(tensor).all():
            raise CodecError(f"tensor {name!r} contains NaN or infinite values")


def encode_snapshot(
    weights: Mapping[str, np.ndarray], encoding: str | Mapping[str, str] = "f16"
) -> tuple[bytes, bytes]:
    """Encode ordered float32 tensors; return ``(snapshot bytes, sha256 of the decoded weights)``.

    ``encoding`` is one of :data:`ENCODINGS` for every tensor or a per-tensor mapping (missing names use
    ``"f16"``). Use :func:`decode_snapshot` on the result to get the weights devices will hold.
    """
    _check_weights(weights)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    records = []
    decoded: dict[str, np.ndarray] = {}
    for name, tensor in weights.items():
        chosen = encoding if isinstance(encoding, str) else encoding.get(name, "f16")
        if chosen not in ENCODINGS:
            raise CodecError(f"unknown tensor encoding {chosen!r} for {name!r}; use one of {ENCODINGS}")
        codes, scale = _quantize_tensor(tensor, chosen)
        decoded[name] = _dequantize(codes, chosen, scale).reshape(tensor.shape)
        records.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "enc": chosen,
                "scale": scale,
                "data": compressor.compress(codes.tobytes()),
            }
        )
    digest = weights_digest(decoded)
    body = {"fmt": FORMAT, "v": VERSION, "tensors": records, "sha256": digest}
    return msgpack.packb(body, use_bin_type=True), digest


def _unpack(data: bytes, expected_format: str) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_PAYLOAD_BYTES:
        raise CodecError("snapshot payload must be bytes within the size limit")
    try:
        body = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_PAYLOAD_BYTES,
            max_str_len=1 << 16,
            max_array_len=MAX_TENSORS,
            max_map_len=MAX_TENSORS,
        )
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"snapshot is not valid msgpack: {error}") from None
    if not isinstance(body, dict) or body.get("fmt") != expected_format or body.get("v") != VERSION:
        raise CodecError(f"not a {expected_format} v{VERSION} payload")
    if not isinstance(body.get("tensors"), list):
        raise CodecError("snapshot has no tensor list")
    return body


def _read_codes(
    record: object, decompressor: zstandard.ZstdDecompressor, dtype_of: Mapping[str, np.dtype]
) -> tuple[str, tuple[int, ...], str, float, np.ndarray]:
    if not isinstance(record, dict):
        raise CodecError("tensor record must be a map")
    name, shape, enc, scale, data = (record.get(k) for k in ("name", "shape", "enc", "scale", "data"))
    if not isinstance(name, str) or not isinstance(enc, str) or not isinstance(data, bytes):
        raise CodecError(f"malformed tensor record {name!r}")
    if enc not in dtype_of:
        raise CodecError(f"malformed tensor record {name!r}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise CodecError(f"tensor {name!r} has a malformed shape")
    if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
        raise CodecError(f"tensor {name!r} has a malformed scale")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    expected = count * dtype_of[enc].itemsize
    if expected > MAX_TENSOR_BYTES:
        raise CodecError(f"tensor {name!r} is larger than the {MAX_TENSOR_BYTES}-byte limit")
    try:
        raw = decompressor.decompress(data, max_output_size=expected) if expected else b""
    except zstandard.ZstdError as error:
        raise CodecError(f"tensor {name!r} does not decompress: {error}") from None
    if len(raw) != expected:
        raise CodecError(f"tensor {name!r} holds {len(raw)} bytes, expected {expected}")
    return name, tuple(shape), enc, scale, np.frombuffer(raw, dtype=dtype_of[enc])


def decode_snapshot(data: bytes) -> dict[str, np.ndarray]:
    """Decode a snapshot to float32 tensors and verify its SHA-256; any defect raises :class:`CodecError`."""
    body = _unpack(data, FORMAT)
    decompressor = zstandard.ZstdDecompressor()
    weights: dict[str, np.ndarray] = {}
    for record in body["tensors"]:
        name, shape, enc, scale, codes = _read_codes(record, decompressor, _CODE_DTYPE)
        if name in weights:
            raise CodecError(f"tensor {name!r} appears twice")
        weights[name] = _dequantize(codes, enc, scale).reshape(shape)
    if weights_digest(weights) != body.get("sha256"):
        raise CodecError("snapshot hash mismatch: the payload is corrupt or was tampered with")
    return weights


def encode_delta(previous: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> bytes:
    """A delta that turns the decoded weights ``previous`` into the decoded weights ``new`` bit-exactly.

    Both must have the same names, order and shapes (a layout change needs a full snapshot).
    """
    _check_weights(previous)
    _check_weights(new)
    if [(k, v.shape) for k, v in previous.items()] != [(k, v.shape) for k, v in new.items()]:
        raise CodecError("delta needs the same tensor names, order and shapes; send a full snapshot")
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    records = []
    for name, tensor in new.items():
        old_bits = np.ascontiguousarray(previous[name], dtype="<f4").view("<u4").reshape(-1)
        diff = np.ascontiguousarray(tensor, dtype="<f4").view("<u4").reshape(-1) - old_bits
        planes = diff.view(np.uint8).reshape(-1, 4).T.copy()  # byte plane j holds byte j of every word
        records.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "enc": "xplanes",
                "scale": 1.0,
                "data": compressor.compress(planes.tobytes()),
            }
        )
    body = {
        "fmt": DELTA_FORMAT,
        "v": VERSION,
        "tensors": records,
        "base_sha256": weights_digest(previous),
        "sha256": weights_digest(new),
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def apply_delta(previous: Mapping[str, np.ndarray], delta: bytes) -> dict[str, np.ndarray]:
    """Apply :func:`encode_delta` output to ``previous``; verifies the base and the result digests."""
    body = _unpack(delta, DELTA_FORMAT)
    if weights_digest(previous) != body.get("base_sha256"):
        raise CodecError(
            "delta does not apply to the weights held (base hash mismatch); fetch the full snapshot"
        )
    decompressor = zstandard.ZstdDecompressor()
    records = body["tensors"]
    if [r.get("name") if isinstance(r, dict) else None for r in records] != list(previous):
        raise CodecError("delta tensor names do not match the weights held")
    result: dict[str, np.ndarray] = {}
    for record in records:
        name, shape, _, _, words = _read_codes(record, decompressor, {"xplanes": np.dtype("<u4")})
        if shape != previous[name].shape:
            raise CodecError(f"delta tensor {name!r} has the wrong shape")
        count = words.size
        planes = words.view(np.uint8)
        diff = np.ascontiguousarray(planes.reshape(4, count).T).view("<u4").reshape(-1)
        old_bits = np.ascontiguousarray(previous[name], dtype="<f4").view("<u4").reshape(-1)
        result[name] = (old_bits + diff).view("<f4").astype(np.float32).reshape(shape)
    if weights_digest(result) != body.get("sha256"):
        raise CodecError("delta result hash mismatch: the delta is corrupt or was tampered with")
    return result
