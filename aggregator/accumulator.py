"""Running sums of client updates: memory O(d) however many devices report."""

from __future__ import annotations

import numpy as np

from shared.errors import CodecError


class WeightedMean:
    """Example-weighted mean of plain float32 deltas (FedAvg, McMahan et al. 2017)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._sum = np.zeros(dim, dtype=np.float64)
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: np.ndarray, weight: float) -> None:
        if delta.shape != (self.dim,):
            raise CodecError(f"delta has shape {delta.shape}, expected ({self.dim},)")
        if weight <= 0:
            raise CodecError("weight must be > 0")
        self._sum += weight * delta.astype(np.float64)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise CodecError("no updates to average")
        return (self._sum / self.total_weight).astype(np.float32)
