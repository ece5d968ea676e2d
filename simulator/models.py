"""Small models for the simulator's workloads."""

from __future__ import annotations

import torch
from torch import nn


def digits_mlp(hidden: int = 64, seed: int = 0) -> nn.Module:
    """64 -> hidden -> 10 MLP for 8x8 digits (4,810 parameters at hidden=64)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def digits_wide_mlp(hidden: int = 1024, seed: int = 0) -> nn.Module:
    """64 -> hidden -> hidden -> 10 MLP for 8x8 digits (1,126,410 parameters at hidden=1024).

    The same task as :func:`digits_mlp` with a model large enough that the per-round secure-aggregation
    overhead, which does not grow with the model, is amortised as on real models. Built with torch's RNG
    seeded and restored, so the caller's global RNG state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())
