"""Local training on the device: runs without MQTT, so tests and benchmarks can drive it alone."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edge_client.model import FederatedModel
from shared.errors import ConfigError, FedmqError

log = logging.getLogger(__name__)

#: Local optimizers :class:`LocalTrainer` can run.
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings. ``steps`` (if set) overrides ``epochs``."""

    epochs: int = 5
    steps: int | None = None
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = None
    #: "sgd" (with ``momentum``) or "adamw" (Loshchilov & Hutter, ICLR 2019; ``momentum`` unused,
    #: ``weight_decay`` decoupled). AdamW's moments are rebuilt every round, so a device keeps no
    #: optimizer state between rounds; it suits transformers and LoRA adapters, whose SGD steps are slow.
    optimizer: str = "sgd"
    #: torch threads; 1 keeps many simulated devices (and a real SBC) from oversubscribing cores.
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 and self.steps is None:
            raise ConfigError("epochs", "must be >= 1 (or set steps)")
        if self.steps is not None and self.steps < 1:
            raise ConfigError("steps", "must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size", "must be >= 1")
        if self.lr <= 0:
            raise ConfigError("lr", "must be > 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", "must be in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"{self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.threads < 1:
            raise ConfigError("threads", "must be >= 1")


class TrainingInterrupted(FedmqError):
    """A local training was stopped before it finished (:meth:`LocalTrainer.interrupt`)."""


@dataclass(frozen=True)
class TrainResult:
    delta: np.ndarray  # float32, new weights minus the weights training started from (trained blocks)
    num_examples: int
    loss: float
    seconds: float
    #: Bytes of training state held at the end of training, measured from the live tensors: every
    #: parameter of the module, the gradients of the trained ones, and the optimizer's state.
    state_bytes: int = 0


class LocalTrainer:
    """Trains a :class:`FederatedModel` on one device's data, starting from given global weights."""

    def __init__(
        self,
        model: FederatedModel,
        features: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(features) != len(labels) or len(features) == 0:
            raise ConfigError("dataset", "features and labels must be non-empty and of equal length")
        self.model = model
        self.features = features
        self.labels = labels
        self.config = config or TrainConfig()
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self._rounds = 0
        # One user of the module at a time: training, the time estimate and memory planning all mutate
        # it, and a cancelled asyncio task does not stop the worker thread it started.
        self._exclusive = threading.RLock()
        self._active = False  # a training holds the module (under _exclusive)
        self._interrupt = threading.Event()

    def interrupt(self) -> None:
        """Ask a running training to stop at its next step (it raises :class:`TrainingInterrupted`).

        A worker thread cannot be cancelled from asyncio; without this a device told to stop (SIGTERM)
        would wait for the whole local training before its process could exit.
        """
        if self._active:
            self._interrupt.set()

    def exclusive(self) -> threading.RLock:
        """Hold while using the module directly (``with trainer.exclusive(): ...``); training and the
        estimate take it themselves, so a second caller waits instead of corrupting the first."""
        return self._exclusive

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def steps_per_round(self, config: TrainConfig | None = None) -> int:
        """Optimisation steps one round of local training takes."""
        cfg = config or self.config
        return (
            cfg.steps
            if cfg.steps is not None
            else cfg.epochs * max(1, -(-self.num_examples // cfg.batch_size))
        )

    def estimate_seconds(self) -> float:
        """Seconds a round of local training will take, from one timed forward and backward pass on a
        batch times the round's steps; the module's state (weights, batch-norm statistics) is restored.

        A new device has measured nothing yet; with this it can tell before its first round whether it
        can train within a round's window (``EdgeConfig.train_ahead``).
        """
        with self._exclusive:
            module = self.model.module
            saved = {k: v.clone() for k, v in module.state_dict().items()}
            batch = slice(0, min(self.config.batch_size, self.num_examples))
            start = time.perf_counter()
            try:
                module.train()
                self.loss_fn(module(self.features[batch]), self.labels[batch]).backward()
            finally:
                for param in module.parameters():
                    param.grad = None
                module.load_state_dict(saved)
            return (time.perf_counter() - start) * self.steps_per_round()

    def train(
        self,
        global_weights: np.ndarray,
        blocks: Sequence[str] | None = None,
        micro_batch: int | None = None,
        momentum: bool = True,
    ) -> TrainResult:
        """Train from ``global_weights``; with ``blocks``, only those parameter blocks train (the rest are
        frozen: no gradients, no optimizer state, and backward stops at the earliest trainable block) and
        the delta covers only them, in layout order.

        ``micro_batch`` splits every batch into pieces of at most that many examples and accumulates their
        gradients before the step: the same gradient as the whole batch (for a mean loss and no batch
        statistics), with the saved activations of one piece instead of the batch. A device under a memory
        budget gets it, and ``momentum=False`` (SGD without a momentum buffer) when even that does not
        fit, from :func:`edge_client.memory.plan_training`.
        """
        if micro_batch is not None and micro_batch < 1:
            raise ConfigError("micro_batch", "must be >= 1")
        with self._exclusive:
            self._active = True
            self._interrupt.clear()
            try:
                return self._train_blocks(global_weights, blocks, micro_batch, momentum)
            finally:
                self._active = False
                self._interrupt.clear()

    def _train_blocks(
        self,
        global_weights: np.ndarray,
        blocks: Sequence[str] | None,
        micro_batch: int | None,
        momentum: bool,
    ) -> TrainResult:
        if blocks is None:
            return self._train(global_weights, micro_batch, momentum)
        trainable = {n for b in self.model.blocks if b.name in set(blocks) for n in b.param_names}
        unknown = set(blocks) - {b.name for b in self.model.blocks}
        if unknown:
            raise ConfigError("blocks", f"unknown blocks {sorted(unknown)}")
        params = dict(self.model.module.named_parameters())
        federated = self.model.federated_names
        try:
            for name in federated:
                params[name].requires_grad_(name in trainable)
            result = self._train(global_weights, micro_batch, momentum)
        finally:
            for name in federated:
                params[name].requires_grad_(True)
        delta = np.concatenate([result.delta[s] for s in self.model.block_slices(blocks)])
        return dataclasses.replace(result, delta=delta)

    def _train(self, global_weights: np.ndarray, micro_batch: int | None, momentum: bool) -> TrainResult:
        cfg = self.config if momentum else dataclasses.replace(self.config, momentum=0.0)
        start = time.perf_counter()
        torch.set_num_threads(cfg.threads)
        self.model.set_flat(global_weights)
        module = self.model.module
        module.train()
        for param in module.parameters():
            param.grad = None  # last round's gradients (of now-frozen blocks too) would only hold memory
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg, params)
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + self._rounds)
        self._rounds += 1
        n = self.num_examples
        total_steps = self.steps_per_round(cfg)
        losses: list[float] = []
        step = 0
        while step < total_steps:
            order = torch.randperm(n, generator=generator)
            for begin in range(0, n, cfg.batch_size):
                if step >= total_steps:
                    break
                if self._interrupt.is_set():
                    raise TrainingInterrupted(f"training interrupted after {step} of {total_steps} steps")
                idx = order[begin : begin + cfg.batch_size]
                optimizer.zero_grad(set_to_none=True)
                if micro_batch is None or micro_batch >= len(idx):
                    loss = self.loss_fn(module(self.features[idx]), self.labels[idx])
                    loss.backward()
                    batch_loss = float(loss.detach())
                else:
                    batch_loss = 0.0
                    for part in idx.split(micro_batch):
                        share = len(part) / len(idx)
                        loss = self.loss_fn(module(self.features[part]), self.labels[part]) * share
                        loss.backward()  # frees this piece's activations before the next one
                        batch_loss += float(loss.detach())
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                losses.append(batch_loss)
                step += 1
        delta = self.model.get_flat() - global_weights.astype(np.float32)
        seconds = time.perf_counter() - start
        return TrainResult(
            delta, n, float(np.mean(losses)) if losses else 0.0, seconds, _state_bytes(module, optimizer)
        )


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The local optimizer ``config`` asks for, over ``params`` (the trainable ones only)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _state_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the live training state: all parameters, the trained ones' gradients, optimizer state."""
    total = sum(p.numel() * p.element_size() for p in module.parameters())
    total += sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
    for state in optimizer.state.values():
        total += sum(
            v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor) and v.dim()
        )
    return total
