"""Update compression (uplink) and model snapshots (downlink), pure numpy. See docs/compression.md.

Uplink: :class:`UpdateEncoder` / :class:`UpdateDecoder` chain clip -> rotate -> subsample -> quantize
(+ weight limbs), linear so that it survives secure aggregation. Downlink: :func:`encode_snapshot`,
:func:`decode_snapshot`, :func:`encode_delta`, :func:`apply_delta`. Wire packing: :func:`pack` /
:func:`unpack`.
"""

from shared.codec.bitpack import pack, packed_size, unpack
from shared.codec.pipeline import (
    CodecConfig,
    Float32Codec,
    SparseUpdate,
    TopKEncoder,
    UpdateDecoder,
    UpdateEncoder,
    WeightCoordinates,
)
from shared.codec.snapshot import apply_delta, decode_snapshot, encode_delta, encode_snapshot, weights_digest

__all__ = [
    "CodecConfig",
    "Float32Codec",
    "SparseUpdate",
    "TopKEncoder",
    "UpdateDecoder",
    "UpdateEncoder",
    "WeightCoordinates",
    "apply_delta",
    "decode_snapshot",
    "encode_delta",
    "encode_snapshot",
    "pack",
    "packed_size",
    "unpack",
    "weights_digest",
]
