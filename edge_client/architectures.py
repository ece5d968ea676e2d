"""Per-architecture training defaults, so that federating a model needs no optimizer tuning to start.

The families and why they differ:

* ``mlp`` / ``cnn``: SGD with momentum is the FedAvg workhorse (McMahan et al. 2017) and keeps no
  per-parameter state between rounds, so a device's memory is the model plus one momentum buffer;
* ``rnn`` (RNN/LSTM/GRU): gradients explode through time, so clip their norm (Pascanu et al. 2013);
  LEAF's Shakespeare baseline trains its LSTM with plain SGD, which clipping keeps stable;
* ``transformer``: AdamW with clipping; :class:`~edge_client.trainer.LocalTrainer` runs it
  (``TrainConfig.optimizer="adamw"``), and :meth:`ArchitectureDefaults.make_optimizer` builds the same
  optimizer for custom training loops.

Detection looks at the module tree: anything attention-like wins, then recurrent layers, then
convolutions; everything else is an MLP. Pass ``architecture=`` to override.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from edge_client.trainer import TrainConfig
from shared.errors import ConfigError

Architecture = Literal["mlp", "cnn", "rnn", "transformer"]
OptimizerName = Literal["sgd", "adamw"]


@dataclass(frozen=True)
class ArchitectureDefaults:
    """Starting-point settings for one architecture family (override fields with ``dataclasses.replace``)."""

    architecture: Architecture
    lr: float
    momentum: float
    weight_decay: float = 0.0
    grad_clip: float | None = None
    #: the optimizer both :meth:`train_config` (for LocalTrainer) and :meth:`make_optimizer` use.
    optimizer: OptimizerName = "sgd"
    adamw_lr: float = 1e-3

    def train_config(self, **overrides: Any) -> TrainConfig:
        """A :class:`TrainConfig` with these defaults; ``overrides`` win (epochs, batch_size, ...)."""
        fields: dict[str, Any] = {
            "lr": self.adamw_lr if self.optimizer == "adamw" else self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "optimizer": self.optimizer,
        }
        fields.update(overrides)
        return TrainConfig(**fields)

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        trainable = [p for p in params if p.requires_grad]
        if self.optimizer == "adamw":
            return torch.optim.AdamW(trainable, lr=self.adamw_lr, weight_decay=self.weight_decay or 0.01)
        return torch.optim.SGD(trainable, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


DEFAULTS: dict[Architecture, ArchitectureDefaults] = {
    "mlp": ArchitectureDefaults("mlp", lr=0.05, momentum=0.9),
    "cnn": ArchitectureDefaults("cnn", lr=0.05, momentum=0.9),
    "rnn": ArchitectureDefaults("rnn", lr=0.5, momentum=0.0, grad_clip=1.0),
    "transformer": ArchitectureDefaults(
        "transformer", lr=0.05, momentum=0.9, grad_clip=1.0, optimizer="adamw", adamw_lr=1e-3
    ),
}


def _is_attention(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention | nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        return True
    name = type(module).__name__.lower()
    return "attention" in name or "transformer" in name


def detect_architecture(module: nn.Module) -> Architecture:
    """The family of ``module``, from the layer types it contains (attention > recurrent > conv > mlp)."""
    subs = list(module.modules())
    if any(_is_attention(sub) for sub in subs):
        return "transformer"
    if any(isinstance(sub, nn.RNNBase) for sub in subs):
        return "rnn"
    if any(isinstance(sub, nn.modules.conv._ConvNd) for sub in subs):
        return "cnn"
    return "mlp"


def architecture_defaults(
    module: nn.Module, architecture: Architecture | None = None
) -> ArchitectureDefaults:
    """The defaults for ``module`` (detected unless ``architecture`` is given)."""
    family = architecture or detect_architecture(module)
    if family not in DEFAULTS:
        raise ConfigError("architecture", f"unknown {family!r}; expected one of {sorted(DEFAULTS)}")
    return DEFAULTS[family]


def default_train_config(
    module: nn.Module, architecture: Architecture | None = None, **overrides: Any
) -> TrainConfig:
    """Shortcut: ``architecture_defaults(module).train_config(**overrides)``."""
    return architecture_defaults(module, architecture).train_config(**overrides)


__all__ = [
    "DEFAULTS",
    "Architecture",
    "ArchitectureDefaults",
    "architecture_defaults",
    "default_train_config",
    "detect_architecture",
]
