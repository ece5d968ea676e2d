"""Map a ``torch.nn.Module`` onto the flat layout both sides agree on.

Only parameters are federated by default; buffers such as BatchNorm running statistics stay on the
device (as in FedBN, Li et al. ICLR 2021), because they describe the device's own data distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from shared.errors import CodecError
from shared.layout import ModelLayout

ParamFilter = Callable[[str, nn.Parameter], bool]


class FederatedModel:
    """A module plus the choice of which of its parameters are federated."""

    def __init__(self, module: nn.Module, federated: ParamFilter | None = None) -> None:
        self.module = module
        keep = federated or (lambda name, p: True)
        self._params: list[tuple[str, nn.Parameter]] = [
            (name, p) for name, p in module.named_parameters() if keep(name, p)
        ]
        if not self._params:
            raise CodecError("the model has no federated parameters")
        self.layout = ModelLayout.from_shapes((name, tuple(p.shape)) for name, p in self._params)

    @property
    def dim(self) -> int:
        return self.layout.dim

    def get_flat(self) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1).float() for _, p in self._params]).cpu().numpy()

    def set_flat(self, flat: np.ndarray) -> None:
        if flat.shape != (self.dim,):
            raise CodecError(f"flat weights have shape {flat.shape}, model needs ({self.dim},)")
        source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        with torch.no_grad():
            for (_, p), offset, size in zip(self._params, self.layout.offsets, self.layout.sizes):
                p.copy_(source[offset : offset + size].view_as(p))
