"""The device's local training: one training at a time, within its memory budget, in a worker thread.

A :class:`Pending` delta is what :func:`edge_client.participation.decide` calls the held delta: its
base snapshot, its blocks, and the task that trains it. A failed training is counted, logged once and
discarded; the device trains afresh in a later round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from edge_client.config import EdgeConfig, EdgeStats
from edge_client.memory import TrainingPlan, plan_training
from edge_client.trainer import LocalTrainer, TrainingInterrupted, TrainResult

log = logging.getLogger("edge_client.client")


@dataclass
class Pending:
    """A delta in the making (or ready): trained from snapshot ``base`` on ``blocks``."""

    base: int
    blocks: tuple[str, ...] | None
    task: asyncio.Task[TrainResult]
    dim: int


class LocalTraining:
    """Training side of :class:`edge_client.client.EdgeClient` (which owns the state named here)."""

    config: EdgeConfig
    trainer: LocalTrainer
    stats: EdgeStats
    version: int
    _updated: asyncio.Event
    weights: np.ndarray | None
    last_train_s: float | None
    _training: asyncio.Task[None] | None
    _pending: Pending | None
    _plans: dict[tuple[str, ...] | None, TrainingPlan]

    @property
    def client_id(self) -> str:
        return self.config.client_id

    async def _estimate_training_time(self) -> None:
        """Before connecting: a first estimate of the training time, so a slow new device does not take a
        roster slot in its first round either (``EdgeConfig.train_ahead``). It runs before the device
        says it is online, or a round could open and close while the device is still measuring."""
        if not self.config.train_ahead or self.last_train_s is not None:
            return
        try:
            self.last_train_s = await asyncio.to_thread(self.trainer.estimate_seconds)
            log.info("device=%s expects a round of training to take %.2f s", self.client_id,
                     self.last_train_s)  # fmt: skip
        except Exception as exc:  # the first real training will tell (and fail loudly if it must)
            log.error("device=%s could not estimate its training time", self.client_id, exc_info=exc)

    def _train_within_budget(self, weights: np.ndarray, blocks: tuple[str, ...] | None) -> TrainResult:
        """Worker thread: train ``blocks`` as the memory plan for ``memory_budget`` says (if one is set)."""
        budget = self.config.memory_budget
        if budget is None:
            return self.trainer.train(weights, blocks)
        with self.trainer.exclusive():
            return self._train_planned(weights, blocks, budget)

    def _train_planned(self, weights: np.ndarray, blocks: tuple[str, ...] | None, budget: int) -> TrainResult:
        if blocks not in self._plans:
            t = self.trainer
            plan = plan_training(t.model, t.features, t.labels, t.config, t.loss_fn, blocks, budget=budget)
            self._plans[blocks] = plan
            log.info(
                "device=%s blocks %s: micro-batch %d, momentum %s, measured step %d B of %d B",
                self.config.client_id, blocks or "all", plan.micro_batch, plan.momentum,
                plan.memory.peak, budget,
            )  # fmt: skip
        plan = self._plans[blocks]
        return self.trainer.train(weights, blocks, plan.micro_batch, plan.momentum)

    def _training_busy(self) -> bool:
        """Whether a local training (secure or plain) is still running."""
        return self._training is not None and not self._training.done()

    def _start_training(self, blocks: tuple[str, ...] | None) -> Pending:
        """Train on the current snapshot in a worker thread; only ``blocks`` (if given) are trainable."""
        assert self.weights is not None and not self._training_busy()
        model = self.trainer.model
        weights = self.weights
        dim = model.dim if blocks is None else sum(s.stop - s.start for s in model.block_slices(blocks))

        task = asyncio.create_task(asyncio.to_thread(self._train_within_budget, weights, blocks))
        task.add_done_callback(self._record_train_time)
        self._training = asyncio.create_task(self._await_quietly(task))
        self._pending = Pending(self.version, blocks, task, dim)
        return self._pending

    def _record_train_time(self, task: asyncio.Task[TrainResult]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.last_train_s = task.result().seconds
            return
        if isinstance(exc, TrainingInterrupted):  # the device is stopping: nothing failed
            log.info("device=%s %s", self.client_id, exc)
            return
        # Logged once here; the delta is discarded and the device trains afresh in a later round.
        self.stats.failed_trainings += 1
        self.stats.faults.record("", "", "training-failed", f"{type(exc).__name__}: {exc}")
        log.error("device=%s local training failed; discarding it", self.client_id, exc_info=exc)
        if self._pending is not None and self._pending.task is task:
            self._pending = None

    @staticmethod
    async def _await_quietly(task: asyncio.Task[TrainResult]) -> None:
        with contextlib.suppress(Exception):
            await task

    async def wait_for_version(self, version: int, timeout: float) -> None:
        """Wait until the device holds snapshot ``version`` or newer (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while self.version < version:
            self._updated.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.client_id} still on v{self.version}, wanted v{version}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._updated.wait(), remaining)
