"""The flat layout of a model: which tensors, in which order, with which shapes.

Both sides agree on this layout, so the aggregator can sum and step flat float vectors without knowing
the Python class of the model (and without torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shared.errors import CodecError, NotFound
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

    def blocks(self) -> list[Block]:
        """The default parameter blocks (one per owning module), as devices group them."""
        return group_blocks(self.names, self.sizes)

    def slice_of_block(self, name: str) -> slice:
        for block in self.blocks():
            if block.name == name:
                return block.slice
        raise NotFound(f"no block {name!r} in the layout")

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


#: How parameters are grouped into blocks: a callable from a parameter name to its block name, or a
#: mapping from module-name prefixes (``"features"``, ``"encoder.layers.0"``) to block names, where the
#: longest matching prefix wins and unmatched parameters fall back to the default (owning module).
BlockGrouping = Callable[[str], str] | Mapping[str, str]


@dataclass(frozen=True)
class Block:
    """A contiguous run of the flat layout that partial training selects as one unit."""

    name: str
    param_names: tuple[str, ...]
    offset: int
    size: int

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


def module_block(param_name: str) -> str:
    """The default block of a parameter: the module that owns it (``"0.weight"`` -> ``"0"``).

    A parameter registered directly on the root module (no dot) is its own block.
    """
    owner, _, _ = param_name.rpartition(".")
    return owner or param_name


def block_namer(grouping: BlockGrouping | None) -> Callable[[str], str]:
    if grouping is None:
        return module_block
    if callable(grouping):
        return grouping
    prefixes = sorted(grouping, key=len, reverse=True)

    def by_prefix(param_name: str) -> str:
        for prefix in prefixes:
            if param_name == prefix or param_name.startswith(prefix + "."):
                return grouping[prefix]
        return module_block(param_name)

    return by_prefix


def group_blocks(
    names: Sequence[str], sizes: Sequence[int], grouping: BlockGrouping | None = None
) -> list[Block]:
    """Blocks of a layout given as parameter names and sizes, in layout order.

    Torch-free on purpose: the aggregator can call it on a ``ModelLayout`` (``layout.names``,
    ``layout.sizes``) to know which coordinates a "trainable blocks" round config selects.
    Raises :class:`CodecError` if one block's parameters are not contiguous in the layout, because a
    block must be one slice of the flat vector; :class:`FederatedModel` orders its layout by block so
    that this never happens for a model it built.
    """
    namer = block_namer(grouping)
    blocks: list[Block] = []
    offset = 0
    seen: set[str] = set()
    for name, size in zip(names, sizes):
        block = namer(name)
        if blocks and blocks[-1].name == block:
            last = blocks[-1]
            blocks[-1] = Block(block, (*last.param_names, name), last.offset, last.size + int(size))
        else:
            if block in seen:
                raise CodecError(f"block {block!r} is not contiguous in the layout (at parameter {name!r})")
            seen.add(block)
            blocks.append(Block(block, (name,), offset, int(size)))
        offset += int(size)
    return blocks
