"""Measure a device's peak training memory: the tensors one step of local training keeps alive.

RSS is too coarse for a 6,000-parameter model (torch's allocator and thread pools dwarf it), so this
module counts tensor bytes instead, on the device's real model, data, optimizer and freezing:

* **weights**: every parameter of the module (a frozen block is still held);
* **gradients** of the trainable parameters, read after ``backward``;
* **optimizer state** (SGD momentum / AdamW moments), read after ``optimizer.step``;
* **activations**: what autograd saves for the backward pass, captured with
  :func:`torch.autograd.graph.saved_tensors_hooks` during the forward pass. Tensors are counted once per
  storage, and a saved parameter (a layer saving its own weight) is not counted again.

The peak of a step is bounded by ``weights + activations + gradients + optimizer state``: the saved
activations are all alive when ``backward`` starts, the optimizer state lives from the first step on, and
gradients are allocated while backward runs. This is the figure :func:`measure_training_memory` reports
(an upper bound of the live tensor bytes; allocator slack and the interpreter are not counted).

Freezing follows the edge client (``edge_client/client.py``, ``_start_training``): parameters outside the
trainable blocks get ``requires_grad=False``, so autograd saves nothing for the layers before the earliest
trainable block and the optimizer holds no state for frozen ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_client.model import FederatedModel
from edge_client.trainer import LocalTrainer, TrainConfig


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes held during one local training step (see the module docstring)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    trainable_params: int
    batch_size: int

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "peak": self.peak}


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor.data_ptr(), _bytes(tensor)


def _bytes(tensor: torch.Tensor) -> int:
    """The tensor's own bytes (a batch sliced from a dataset does not own the dataset's storage)."""
    return tensor.numel() * tensor.element_size()


@contextlib.contextmanager
def frozen_except(model: FederatedModel, blocks: Iterable[str] | None) -> Iterator[None]:
    """Freeze every federated parameter outside ``blocks`` (None: train all), as the device does."""
    if blocks is None:
        yield
        return
    wanted = set(blocks)
    trainable = {n for b in model.blocks if b.name in wanted for n in b.param_names}
    params = dict(model.module.named_parameters())
    try:
        for name in model.federated_names:
            params[name].requires_grad_(name in trainable)
        yield
    finally:
        for name in model.federated_names:
            params[name].requires_grad_(True)


def measure_training_memory(
    model: FederatedModel,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    blocks: Iterable[str] | None = None,
    steps: int = 2,
) -> TrainingMemory:
    """Tensor bytes of ``steps`` local SGD steps on one full batch, with only ``blocks`` trainable.

    Uses the optimizer :class:`LocalTrainer` would build for ``config``; the model's weights are
    restored afterwards. The largest step is reported (the first step has no optimizer state yet).
    """
    module = model.module
    saved_weights = model.get_flat()
    batch = min(config.batch_size, len(labels))
    x, y = features[:batch], labels[:batch]
    param_keys = {_storage_key(p) for p in module.parameters()}
    weights = sum(_bytes(p) for p in module.parameters())
    worst: TrainingMemory | None = None
    with frozen_except(model, blocks):
        params = [p for p in module.parameters() if p.requires_grad]
        trainer = LocalTrainer(model, features, labels, config, loss_fn)
        optimizer = trainer._make_optimizer(params)
        module.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            seen: dict[tuple[int, int], int] = {}

            def pack(tensor: torch.Tensor, seen: dict[tuple[int, int], int] = seen) -> torch.Tensor:
                key = _storage_key(tensor)
                if key not in param_keys:
                    seen[key] = _bytes(tensor)
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                loss = loss_fn(module(x), y)
            activations = sum(seen.values())
            loss.backward()
            gradients = sum(_bytes(p.grad) for p in params if p.grad is not None)
            optimizer.step()
            state = sum(
                _bytes(value)
                for per_param in optimizer.state.values()
                for value in per_param.values()
                if isinstance(value, torch.Tensor) and value.dim() > 0
            )
            trainable = sum(p.numel() for p in params)
            step = TrainingMemory(weights, gradients, state, activations, trainable, batch)
            if worst is None or step.peak > worst.peak:
                worst = step
    model.set_flat(saved_weights)
    assert worst is not None
    return worst


__all__ = ["TrainingMemory", "frozen_except", "measure_training_memory"]
