"""Language-neutral conformance vectors for fedmq's wire protocol (see docs/protocol.md).

:func:`shared.conformance.vectors.generate` builds every vector from the product code itself, with all
randomness drawn from fixed seeds, so the files under ``spec/vectors/`` are reproducible byte for byte:
``python -m shared.conformance --out spec/vectors`` rewrites them and ``--check`` fails if the code no
longer produces the committed files (a wire change is then a visible, deliberate event).
"""

from shared.conformance.vectors import generate, render

__all__ = ["generate", "render"]
