"""The flat layout of a model: which tensors, in which order, with which shapes.

Both sides agree on this layout, so the aggregator can sum and step flat float vectors without knowing
the Python class of the model (and without torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shared.errors import CodecError
from shared.wire import ParamSpec


@dataclass(frozen=True)
class ModelLayout:
    """Ordered tensor specs; offsets are derived."""

    specs: tuple[ParamSpec, ...]

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str, Sequence[int]]]) -> ModelLayout:
        return cls(tuple(ParamSpec(name, [int(s) for s in shape]) for name, shape in shapes))

    @classmethod
    def from_wire(cls, specs: Sequence[ParamSpec]) -> ModelLayout:
        return cls(tuple(specs))

    def to_wire(self) -> list[ParamSpec]:
        return list(self.specs)

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s.shape, dtype=np.int64)) for s in self.specs)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.sizes)])[:-1])

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def slice_of(self, name: str) -> slice:
        for spec, offset, size in zip(self.specs, self.offsets, self.sizes):
            if spec.name == name:
                return slice(offset, offset + size)
        raise KeyError(name)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of ``flat`` shaped like each tensor."""
        if flat.shape != (self.dim,):
            raise CodecError(f"flat vector has shape {flat.shape}, layout needs ({self.dim},)")
        return {
            spec.name: flat[offset : offset + size].reshape(spec.shape)
            for spec, offset, size in zip(self.specs, self.offsets, self.sizes)
        }

    def flatten(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        out = np.empty(self.dim, dtype=np.float32)
        for spec, offset, size in zip(self.specs, self.offsets, self.sizes):
            array = np.asarray(tensors[spec.name], dtype=np.float32)
            if list(array.shape) != spec.shape:
                raise CodecError(
                    f"tensor {spec.name} has shape {list(array.shape)}, layout says {spec.shape}"
                )
            out[offset : offset + size] = array.reshape(-1)
        return out
