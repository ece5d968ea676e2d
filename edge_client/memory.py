"""A device's training memory: measure what one step holds, and fit training into a budget.

RSS is too coarse for a model of a few thousand parameters (torch's allocator and thread pools dwarf it),
so this module counts tensor bytes instead, on the device's real model, data, optimizer and freezing:

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

Three levers bring a step under a device's budget (TinyTL, Cai et al. NeurIPS 2020, shows activations,
not weights, dominate on-device training memory):

* **freezing** (partial training, :func:`frozen_except`, the rule of ``EdgeClient._start_training``):
  parameters outside the round's blocks get ``requires_grad=False``, so they have no gradient or optimizer
  state and autograd saves nothing for the layers before the earliest trainable block;
* **micro-batching** (:func:`plan_training`): a batch is run in pieces whose gradients accumulate, so
  only one piece's activations are alive. The gradient is the batch's (for a mean loss and no batch
  statistics); the cost is time, not accuracy;
* **no momentum buffer**, only when the gradient and one example's activations fit but SGD momentum
  does not: plain SGD for that round (the optimizer is rebuilt every round anyway).

How the budget is split with the aggregator: a device announces its budget and its
:func:`activation_profile` (one example's activations per earliest trainable block); the aggregator,
torch-free, sizes the round's block set so its weights, gradients and one example's activations fit
(``aggregator/blocks.py``), and the device then keeps momentum if it fits and takes the largest
micro-batch that still fits (:func:`plan_training`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edge_client.model import FederatedModel
from edge_client.trainer import TrainConfig, make_optimizer

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes held during one local training step (see the module docstring)."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    trainable_params: int
    batch_size: int
    #: Examples per forward pass (== batch_size unless micro-batched).
    micro_batch: int = 0

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
    loss_fn: LossFn = nn.functional.cross_entropy,
    blocks: Iterable[str] | None = None,
    *,
    steps: int = 2,
    micro_batch: int | None = None,
) -> TrainingMemory:
    """Tensor bytes of ``steps`` local steps on one full batch, with only ``blocks`` trainable.

    Uses the optimizer :class:`~edge_client.trainer.LocalTrainer` builds for ``config`` and its
    micro-batching; the module's state (weights and buffers) is restored afterwards. The largest step is
    reported (the first step has no optimizer state yet).
    """
    module = model.module
    saved_state = {name: value.detach().clone() for name, value in module.state_dict().items()}
    batch = min(config.batch_size, len(labels))
    piece = batch if micro_batch is None else max(1, min(micro_batch, batch))
    x, y = features[:batch], labels[:batch]
    param_keys = {_storage_key(p) for p in module.parameters()}
    weights = sum(_bytes(p) for p in module.parameters())
    worst: TrainingMemory | None = None
    was_training = module.training
    with frozen_except(model, blocks):
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = make_optimizer(config, params)
        module.train()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            activations = 0
            for begin in range(0, batch, piece):
                seen: dict[tuple[int, int], int] = {}

                def pack(tensor: torch.Tensor, seen: dict[tuple[int, int], int] = seen) -> torch.Tensor:
                    key = _storage_key(tensor)
                    if key not in param_keys:
                        seen[key] = _bytes(tensor)
                    return tensor

                with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                    part = slice(begin, begin + piece)
                    loss = loss_fn(module(x[part]), y[part]) * (len(y[part]) / batch)
                activations = max(activations, sum(seen.values()))  # one piece alive at a time
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
            step = TrainingMemory(weights, gradients, state, activations, trainable, batch, piece)
            if worst is None or step.peak > worst.peak:
                worst = step
    module.train(was_training)
    module.load_state_dict(saved_state)  # weights and buffers (batch-norm statistics) as they were
    assert worst is not None
    return worst


def activation_profile(
    model: FederatedModel, features: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn
) -> list[int]:
    """Per block, in layout order: saved-activation bytes of one example when that block is the earliest
    trainable one (what a device announces with its budget, ``Presence.activation_profile``).

    Measured with every later block trainable too (trainable layers also save their inputs), so it
    bounds any block set that starts there.
    """
    one = TrainConfig(batch_size=1, momentum=0.0)
    names = [b.name for b in model.blocks]
    return [
        measure_training_memory(model, features[:1], labels[:1], one, loss_fn, names[i:], steps=1).activations
        for i in range(len(names))
    ]


@dataclass(frozen=True)
class TrainingPlan:
    """How a device trains a block set within its budget (see :func:`plan_training`)."""

    micro_batch: int
    #: False: SGD without its momentum buffer (the budget had no room for it).
    momentum: bool
    #: The measured step under this plan.
    memory: TrainingMemory


def plan_training(
    model: FederatedModel,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    loss_fn: LossFn,
    blocks: Iterable[str] | None,
    *,
    budget: int,
) -> TrainingPlan:
    """The plan whose measured step fits ``budget`` bytes with the most examples per pass.

    The configured optimizer comes first; when its state does not fit beside one example's activations
    and SGD momentum is what overflows, the momentum buffer goes (plain SGD: a few local steps from a
    zeroed buffer lose little, while an out-of-memory step loses the update). Activations grow linearly
    with the examples per pass, so two measurements (1 and 2 examples) predict every size; the
    prediction is then measured and stepped down until it fits. When nothing fits, the device trains at
    one example without momentum anyway (logged): the aggregator sized the blocks, and refusing would
    only lose the update.
    """
    blocks = None if blocks is None else list(blocks)
    batch = min(config.batch_size, len(labels))
    lean = dataclasses.replace(config, momentum=0.0)
    candidates = [(config, True)]
    if config.optimizer == "sgd" and config.momentum > 0:
        candidates.append((lean, False))

    def measure(cfg: TrainConfig, m: int) -> TrainingMemory:
        return measure_training_memory(model, features, labels, cfg, loss_fn, blocks, micro_batch=m)

    for cfg, momentum in candidates:
        one = measure(cfg, 1)
        if one.peak > budget:
            continue
        if batch == 1:
            return TrainingPlan(1, momentum, one)
        two = measure(cfg, 2)
        per_example = max(1, two.activations - one.activations)
        m = int(max(1, min(batch, 1 + (budget - one.peak) // per_example)))
        while m > 1:
            step = measure(cfg, m)
            if step.peak <= budget:
                return TrainingPlan(m, momentum, step)
            m = max(1, min(m - 1, int(m * budget / step.peak)))
        return TrainingPlan(1, momentum, one)
    cfg, momentum = candidates[-1]
    step = measure(cfg, 1)
    log.warning(
        "training %s needs %d B at one example per pass, over the %d B budget",
        blocks or "all blocks",
        step.peak,
        budget,
    )
    return TrainingPlan(1, momentum, step)


__all__ = [
    "TrainingMemory",
    "TrainingPlan",
    "activation_profile",
    "frozen_except",
    "measure_training_memory",
    "plan_training",
]
