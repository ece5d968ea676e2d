"""Server optimisers applied to the averaged client delta (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021). Pure numpy: the aggregator never needs torch to aggregate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError

OPTIMIZERS = ("fedavg", "fedavgm", "fedadam")


@dataclass(frozen=True)
class ServerOptimizerConfig:
    name: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9  # FedAvgM
    beta1: float = 0.9  # FedAdam
    beta2: float = 0.99
    tau: float = 1e-3  # FedAdam's adaptivity floor

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError("server_optimizer", f"{self.name!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise ConfigError("server_lr", "must be > 0")
        for name in ("momentum", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, "must be in [0, 1)")
        if self.tau <= 0:
            raise ConfigError("tau", "must be > 0")


class ServerOptimizer:
    """Turns the mean client delta into a step on the global weights; state is checkpointed."""

    def __init__(self, config: ServerOptimizerConfig, dim: int, state: dict[str, np.ndarray] | None = None):
        self.config = config
        self.dim = dim
        self.state: dict[str, np.ndarray] = {}
        if state:
            for key, value in state.items():
                if value.shape != (dim,):
                    raise ConfigError("optimizer_state", f"{key} has shape {value.shape}, expected ({dim},)")
                self.state[key] = value.astype(np.float32)

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """New weights (float32) from the current ones and the averaged client delta."""
        cfg = self.config
        delta = mean_delta.astype(np.float32, copy=False)
        update: np.ndarray
        if cfg.name == "fedavg":
            update = delta
        elif cfg.name == "fedavgm":
            m = self.state.get("m", np.zeros(self.dim, np.float32))
            m = cfg.momentum * m + delta
            self.state["m"] = m
            update = m
        else:
            m = self.state.get("m", np.zeros(self.dim, np.float32))
            v = self.state.get("v", np.full(self.dim, cfg.tau**2, np.float32))
            m = cfg.beta1 * m + (1 - cfg.beta1) * delta
            v = cfg.beta2 * v + (1 - cfg.beta2) * delta * delta
            self.state["m"], self.state["v"] = m, v
            update = m / (np.sqrt(v) + cfg.tau)
        return (weights + cfg.lr * update).astype(np.float32)
