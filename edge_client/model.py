"""Map a ``torch.nn.Module`` onto the flat layout both sides agree on.

The aggregator only ever sees a :class:`~shared.layout.ModelLayout` (names, shapes, order) and flat
float vectors; everything that needs the Python class lives here, on the device.

What is federated, by default:

* parameters that are trained (``requires_grad``): frozen weights, such as the base of a LoRA-wrapped
  model (:mod:`edge_client.lora`), produce no delta, so sending them would only cost bytes;
* except the parameters of BatchNorm layers when ``local_bn`` is on (FedBN, Li et al. ICLR 2021): their
  affine scale/shift, like their running statistics, describe the device's own feature distribution;
* buffers (BatchNorm running statistics, counters) never leave the device.

Parameters are grouped into *blocks* (layers by default) in flat-layout order; partial training selects
a subset of blocks per round (FTTE, Tenison et al. 2025, §8 of the design), so the masked vector covers
only that subset. Block boundaries are derived from parameter names and sizes alone, so the aggregator
can compute the same blocks from the layout without torch (:func:`group_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from shared.errors import CodecError
from shared.layout import Block, BlockGrouping, ModelLayout, block_namer, group_blocks, module_block

ParamFilter = Callable[[str, nn.Parameter], bool]
_BATCH_NORM = (nn.modules.batchnorm._BatchNorm,)


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BATCH_NORM)


class FederatedModel:
    """A module plus the choice of which of its parameters are federated and how they form blocks.

    ``federated`` (optional) decides per parameter; by default a parameter is federated when it is
    trained (``requires_grad``). With ``local_bn`` (the default) BatchNorm parameters stay local
    regardless (FedBN). ``blocks`` overrides the default grouping (one block per owning module).

    The flat layout lists the federated parameters block by block, each block in ``named_parameters``
    order; for the default grouping that is exactly ``named_parameters`` order.
    """

    def __init__(
        self,
        module: nn.Module,
        federated: ParamFilter | None = None,
        *,
        local_bn: bool = True,
        blocks: BlockGrouping | None = None,
    ) -> None:
        self.module = module
        self.local_bn = local_bn
        keep = federated or (lambda name, p: p.requires_grad)
        bn_params = {
            f"{prefix}.{name}" if prefix else name
            for prefix, sub in module.named_modules()
            if local_bn and is_batch_norm(sub)
            for name, _ in sub.named_parameters(recurse=False)
        }
        chosen = [
            (name, p) for name, p in module.named_parameters() if name not in bn_params and keep(name, p)
        ]
        if not chosen:
            raise CodecError("the model has no federated parameters")
        namer = block_namer(blocks)
        order: dict[str, int] = {}
        for name, _ in chosen:
            order.setdefault(namer(name), len(order))
        # Stable sort by block: a no-op for the default grouping, contiguity for custom ones.
        chosen.sort(key=lambda item: order[namer(item[0])])
        self._params: list[tuple[str, nn.Parameter]] = chosen
        self.layout = ModelLayout.from_shapes((name, tuple(p.shape)) for name, p in self._params)
        self.blocks: list[Block] = group_blocks(self.layout.names, self.layout.sizes, blocks)
        self._by_block = {block.name: block for block in self.blocks}

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def federated_names(self) -> list[str]:
        return self.layout.names

    @property
    def local_names(self) -> list[str]:
        """Everything in the module's state that never leaves the device: frozen or BN parameters and
        all buffers (BatchNorm running statistics among them)."""
        federated = set(self.layout.names)
        return [name for name in self.module.state_dict() if name not in federated]

    def local_state(self) -> dict[str, torch.Tensor]:
        """Copies of the device-local tensors, for the device's state store (FedBN statistics survive
        a restart; the global snapshot cannot restore them)."""
        state = self.module.state_dict()
        return {name: state[name].detach().clone() for name in self.local_names}

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        unknown = set(state) - set(self.local_names)
        if unknown:
            raise CodecError(f"not local state of this model: {sorted(unknown)}")
        self.module.load_state_dict(dict(state), strict=False)

    def block_slices(self, blocks: Iterable[str] | None = None) -> list[slice]:
        """Slices of the flat layout covered by ``blocks`` (all blocks if None), in layout order."""
        return [block.slice for block in self._select(blocks)]

    def _select(self, blocks: Iterable[str] | None) -> list[Block]:
        if blocks is None:
            return self.blocks
        wanted = set(blocks)
        unknown = wanted - set(self._by_block)
        if unknown:
            raise CodecError(f"unknown blocks {sorted(unknown)}; this model has {list(self._by_block)}")
        return [block for block in self.blocks if block.name in wanted]

    def _params_of(self, selected: list[Block]) -> list[nn.Parameter]:
        names = {name for block in selected for name in block.param_names}
        return [p for name, p in self._params if name in names]

    def get_flat(self, blocks: Iterable[str] | None = None) -> np.ndarray:
        """The federated weights (of ``blocks`` only, if given, concatenated in layout order)."""
        params = [p for _, p in self._params] if blocks is None else self._params_of(self._select(blocks))
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1).float() for p in params]).cpu().numpy()

    def set_flat(self, flat: np.ndarray, blocks: Iterable[str] | None = None) -> None:
        """Overwrite the federated weights (of ``blocks`` only, if given) from a flat float vector.

        Local-only tensors (frozen, BatchNorm, buffers) are never touched.
        """
        selected = self.blocks if blocks is None else self._select(blocks)
        params = [p for _, p in self._params] if blocks is None else self._params_of(selected)
        expected = sum(block.size for block in selected)
        if flat.shape != (expected,):
            raise CodecError(f"flat weights have shape {flat.shape}, model needs ({expected},)")
        source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        offset = 0
        with torch.no_grad():
            for p in params:
                size = p.numel()
                p.copy_(source[offset : offset + size].view_as(p))
                offset += size


__all__ = ["Block", "BlockGrouping", "FederatedModel", "group_blocks", "is_batch_norm", "module_block"]
