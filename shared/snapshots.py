"""Build and read :class:`~shared.wire.ModelSnapshot` messages: the global model as devices see it.

The body encoding is named in the message so that compact encodings can be added without a schema
change; ``f32`` is raw little-endian float32 of the flat layout.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import nacl.signing
import numpy as np

from shared.errors import CodecError, ProtocolError
from shared.layout import ModelLayout
from shared.signing import sign, verify
from shared.wire import ModelSnapshot, decode, encode

F32 = "f32"


def make_snapshot(
    federation: str,
    version: int,
    round_id: int,
    layout: ModelLayout,
    weights: np.ndarray,
    key: nacl.signing.SigningKey | None = None,
) -> ModelSnapshot:
    if weights.shape != (layout.dim,):
        raise CodecError(f"weights have shape {weights.shape}, layout needs ({layout.dim},)")
    body = np.ascontiguousarray(weights, dtype="<f4").tobytes()
    snapshot = ModelSnapshot(
        federation=federation,
        version=version,
        round_id=round_id,
        layout=layout.to_wire(),
        encoding=F32,
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
    if snapshot.encoding != F32:
        raise CodecError(f"unknown snapshot encoding {snapshot.encoding!r}")
    if len(snapshot.weights) != 4 * layout.dim:
        raise CodecError(f"snapshot body has {len(snapshot.weights)} bytes, layout needs {4 * layout.dim}")
    return np.frombuffer(snapshot.weights, dtype="<f4").astype(np.float32)


def write_initial(path: Path, snapshot: ModelSnapshot) -> None:
    """Write a snapshot file an aggregator can start from (``--initial``)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_bytes(encode(snapshot))
    tmp.replace(path)


def read_initial(path: Path) -> ModelSnapshot:
    return decode(Path(path).read_bytes(), ModelSnapshot)
