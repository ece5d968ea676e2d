"""Build fedmq's conformance vectors from the product code, deterministically.

Every vector is computed by calling the same functions the aggregator and the Python device use; nothing
here re-implements a protocol step. Randomness is the only thing replaced: key pairs come from fixed
32-byte seeds, Shamir's random coefficients and the stochastic-rounding uniforms from seeded streams, and
both are *recorded in the vector*, so a second implementation injects them instead of drawing its own.

Value conventions (also in ``spec/vectors/README.md``): byte strings are lowercase hex; a float32 or
float64 array is the hex of its little-endian bytes; ``typed`` values (message fields) map bytes to
``{"bin": hex}`` and floats to ``{"float": x}`` so that JSON's single number type loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shared.conformance.codecs import bitpack_vectors, codec_vectors, signature_vectors, snapshot_vectors
from shared.conformance.common import VECTORS_VERSION, _coefficients, _Replay
from shared.conformance.crypto import (
    bundle_vectors,
    crypto_vectors,
    graph_vectors,
    prg_vectors,
    shamir_vectors,
)
from shared.conformance.messages import chunking_vectors, topic_vectors, wire_vectors
from shared.conformance.recorded import round_vectors
from shared.conformance.seeds import seed_vectors

# -- driver ----------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "wire": wire_vectors,
    "topics": topic_vectors,
    "chunking": chunking_vectors,
    "crypto": crypto_vectors,
    "prg": prg_vectors,
    "shamir": shamir_vectors,
    "graph": graph_vectors,
    "bundles": bundle_vectors,
    "bitpack": bitpack_vectors,
    "codec": codec_vectors,
    "snapshot": snapshot_vectors,
    "signatures": signature_vectors,
    "round": round_vectors,
    "seeds": seed_vectors,
}


def generate() -> dict[str, dict[str, Any]]:
    """Every section's vectors, keyed by file stem."""
    return {name: {"vectors_version": VECTORS_VERSION, **build()} for name, build in SECTIONS.items()}


def render(vectors: dict[str, Any]) -> str:
    """The exact file text of one section (stable key order, trailing newline)."""
    return json.dumps(vectors, indent=1, ensure_ascii=True) + "\n"


__all__ = ["SECTIONS", "VECTORS_VERSION", "_Replay", "_coefficients", "generate", "render"]
