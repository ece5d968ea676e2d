"""Build and read :class:`~shared.wire.ModelSnapshot` messages: the global model as devices see it.

The body encoding is named in the message: ``f32`` is raw little-endian float32 of the flat layout (the
simplest thing for a foreign decoder); ``compact`` is :mod:`shared.codec.snapshot`'s per-tensor container
(float16 or 8/16-bit integers with a scale per tensor, then zstd), which halves or better the download.

Master weights: the aggregator keeps float32 master weights and publishes their compact encoding; a
device trains from the *decoded* weights and reports its delta against them, and the aggregator adds the
mean delta to its master. The snapshot's quantization error therefore never accumulates: each snapshot
re-encodes the current master, and what a device decodes is fixed by the snapshot's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import nacl.signing
import numpy as np

from shared.codec.snapshot import apply_delta, decode_snapshot, encode_delta, encode_snapshot
from shared.errors import CodecError, ProtocolError
from shared.layout import ModelLayout
from shared.signing import sign, verify
from shared.wire import ModelSnapshot, decode, encode

F32 = "f32"
COMPACT = "compact"
DELTA = "compact-delta"
#: Tensor encodings of compact snapshots (see shared.codec.snapshot).
TENSOR_ENCODINGS = ("f16", "q16", "q8")


def make_snapshot(
    federation: str,
    version: int,
    round_id: int,
    layout: ModelLayout,
    weights: np.ndarray,
    key: nacl.signing.SigningKey | None = None,
    *,
    encoding: str = F32,
) -> ModelSnapshot:
    """Snapshot of flat ``weights``; ``encoding`` is ``f32`` or a tensor encoding of ``compact``."""
    if weights.shape != (layout.dim,):
        raise CodecError(f"weights have shape {weights.shape}, layout needs ({layout.dim},)")
    if encoding == F32:
        body = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    elif encoding in TENSOR_ENCODINGS:
        tensors = {
            name: np.ascontiguousarray(t, dtype=np.float32) for name, t in layout.split(weights).items()
        }
        body, _ = encode_snapshot(tensors, encoding)
    else:
        raise CodecError(f"unknown snapshot encoding {encoding!r}; use f32 or one of {TENSOR_ENCODINGS}")
    snapshot = ModelSnapshot(
        federation=federation,
        version=version,
        round_id=round_id,
        layout=layout.to_wire(),
        encoding=F32 if encoding == F32 else COMPACT,
        weights=body,
        sha256=hashlib.sha256(body).digest(),
        created_at=time.time(),
    )
    return sign(snapshot, key) if key is not None else snapshot


def snapshot_weights(snapshot: ModelSnapshot, verify_key: nacl.signing.VerifyKey | None = None) -> np.ndarray:
    """Verified flat float32 weights of ``snapshot`` (hash always, signature when a key is given)."""
    if not snapshot.weights_ok():
        raise ProtocolError(f"snapshot v{snapshot.version} fails its hash check")
    if verify_key is not None:
        verify(snapshot, verify_key)
    layout = ModelLayout.from_wire(snapshot.layout)
    if snapshot.encoding == COMPACT:
        decoded = decode_snapshot(snapshot.weights)
        if list(decoded) != layout.names:
            raise CodecError("compact snapshot tensors do not match the layout")
        return layout.flatten(decoded)
    if snapshot.encoding != F32:
        raise CodecError(f"unknown snapshot encoding {snapshot.encoding!r}")
    if len(snapshot.weights) != 4 * layout.dim:
        raise CodecError(f"snapshot body has {len(snapshot.weights)} bytes, layout needs {4 * layout.dim}")
    return np.frombuffer(snapshot.weights, dtype="<f4").astype(np.float32)


def make_delta_snapshot(
    full: ModelSnapshot,
    base_version: int,
    previous_weights: np.ndarray,
    new_weights: np.ndarray,
    key: nacl.signing.SigningKey | None = None,
) -> ModelSnapshot:
    """What a holder of version ``base_version`` needs to reach ``full``: a bit-exact delta if that is
    smaller than ``full``'s body, else ``full`` itself. ``*_weights`` are the *decoded* weights of both."""
    layout = ModelLayout.from_wire(full.layout)
    body = encode_delta(layout.split(previous_weights), layout.split(new_weights))
    if len(body) >= len(full.weights):
        return full
    delta = dataclasses.replace(
        full,
        encoding=DELTA,
        weights=body,
        sha256=hashlib.sha256(body).digest(),
        base_version=base_version,
        signature=b"",
    )
    return sign(delta, key) if key is not None else delta


def apply_delta_snapshot(
    snapshot: ModelSnapshot, base_weights: np.ndarray, verify_key: nacl.signing.VerifyKey | None = None
) -> np.ndarray:
    """Weights of version ``snapshot.version`` from the decoded weights of ``snapshot.base_version``;
    the delta checks both digests, so a wrong base raises CodecError (fetch the full snapshot)."""
    if snapshot.encoding != DELTA:
        raise CodecError(f"not a delta snapshot: {snapshot.encoding!r}")
    if not snapshot.weights_ok():
        raise ProtocolError(f"delta v{snapshot.base_version}->v{snapshot.version} fails its hash check")
    if verify_key is not None:
        verify(snapshot, verify_key)
    layout = ModelLayout.from_wire(snapshot.layout)
    return layout.flatten(apply_delta(layout.split(base_weights), snapshot.weights))


def write_initial(path: Path, snapshot: ModelSnapshot) -> None:
    """Write a snapshot file an aggregator can start from (``--initial``)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_bytes(encode(snapshot))
    tmp.replace(path)


def read_initial(path: Path) -> ModelSnapshot:
    return decode(Path(path).read_bytes(), ModelSnapshot)
