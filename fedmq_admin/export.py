"""Export the aggregator's current global model as a ``safetensors`` file (or ``.npz``), without torch.

Why safetensors: it is torch's, JAX's and Hugging Face's common weights format, and its layout (an
8-byte header length, a JSON header, raw little-endian tensors) is simple enough to write here, so the
admin tool needs neither torch nor a safetensors package. The tensor names are the layout's, which are
the model's ``state_dict`` names: ``model.load_state_dict(safetensors.torch.load_file(path),
strict=False)`` loads the federated parameters (device-local ones such as FedBN statistics are not in
the global model).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from aggregator.store import Store
from shared.errors import FedmqError
from shared.layout import ModelLayout
from shared.snapshots import snapshot_weights
from shared.wire import ModelSnapshot, decode


def latest_model(store_dir: Path) -> tuple[ModelSnapshot, dict[str, np.ndarray]]:
    """The newest stored snapshot of an aggregator store and its tensors by name."""
    if not (Path(store_dir) / "journal.sqlite3").exists():
        raise FedmqError(f"{store_dir} is not an aggregator store (no journal.sqlite3)")
    store = Store(Path(store_dir))
    try:
        stored = store.latest_snapshot()
    finally:
        store.close()
    if stored is None:
        raise FedmqError(f"no snapshot in {store_dir} yet")
    snapshot = decode(stored.snapshot, ModelSnapshot)
    layout = ModelLayout.from_wire(snapshot.layout)
    return snapshot, layout.split(snapshot_weights(snapshot).astype(np.float32))


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (float32) in the safetensors format."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]
        }
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    tmp.replace(path)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read back a float32 safetensors file (tests, and a torch-free check of an export)."""
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    metadata = header.pop("__metadata__", {})
    base = 8 + size
    tensors = {}
    for name, spec in header.items():
        begin, end = spec["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + begin : base + end], dtype="<f4").reshape(spec["shape"])
    return tensors, metadata


def export(store_dir: Path, out: Path) -> ModelSnapshot:
    """Write the latest global model to ``out`` (``.npz`` by suffix, else safetensors)."""
    snapshot, tensors = latest_model(store_dir)
    metadata = {"federation": snapshot.federation, "version": str(snapshot.version),
                "round": str(snapshot.round_id), "format": "pt"}  # fmt: skip
    if Path(out).suffix == ".npz":
        np.savez(out, **tensors)
    else:
        write_safetensors(Path(out), tensors, metadata)
    return snapshot
