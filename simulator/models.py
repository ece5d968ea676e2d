"""Small models for the simulator's workloads."""

from __future__ import annotations

import torch
from torch import nn


def digits_mlp(hidden: int = 64, seed: int = 0) -> nn.Module:
    """64 -> hidden -> 10 MLP for 8x8 digits (4,810 parameters at hidden=64)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())
