"""The device: keeps the latest global model, trains when a round it can join is open, and publishes
its update inside the round's window.

The client rides out broker disconnects (the connection helper reconnects and re-subscribes; retained
snapshot and round messages bring it up to date on every subscribe), and a device that comes online
late joins the round that is open at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field

import nacl.signing
import numpy as np

from edge_client.delivery import Outbox, phase_opened_by
from edge_client.memory import TrainingPlan, activation_profile, plan_training
from edge_client.secure import SecureParticipation
from edge_client.trainer import LocalTrainer, TrainingInterrupted, TrainResult
from shared.chunking import DEFAULT_CHUNK_LIMIT, Reassembler
from shared.errors import ConfigError, FedmqError, ProtocolError
from shared.mqtt import MqttConfig, MqttConnection, Presence, publish_framed
from shared.secagg import SecAggClient
from shared.signing import verify
from shared.snapshots import DELTA, apply_delta_snapshot, snapshot_weights
from shared.staleness import StalenessPolicy
from shared.supervision import INTERNAL_ERROR, FaultCounter, guarded, rule_of
from shared.topics import UPDATE, Topics, check_id
from shared.wire import (
    PHASE_COLLECT,
    PHASE_KEYS,
    Message,
    ModelSnapshot,
    ModelUpdate,
    RoundAnnounce,
    decode,
    encode,
)
from shared.wire import Presence as PresenceMsg
from shared.wire.secagg import Roster, ShareBatch, SurvivorList

log = logging.getLogger(__name__)
_SAMPLER = random.SystemRandom()


@dataclass(frozen=True)
class EdgeConfig:
    federation: str
    mqtt: MqttConfig
    #: The aggregator's Ed25519 public key; when set, unsigned or forged snapshots/rounds are refused.
    aggregator_key: bytes | None = None
    chunk_limit: int = DEFAULT_CHUNK_LIMIT
    max_snapshot_bytes: int = 64 * 1024 * 1024
    #: Secure aggregation: this device's enrolled Ed25519 identity and the enrolled devices' public keys.
    identity: nacl.signing.SigningKey | None = None
    directory: Mapping[str, bytes] | None = None
    #: Bytes this device can spend on local training (weights, gradients, optimizer state and saved
    #: activations; see ``edge_client/memory.py``). It announces the budget with its per-block activation
    #: costs, the aggregator sizes each round's blocks to it, and the device micro-batches so the step
    #: fits. None: undeclared (train whatever the round asks, whole batches).
    memory_budget: int | None = None
    #: Once up to date, follow ``fl/<fed>/delta`` only and fetch the full snapshot just when behind.
    use_deltas: bool = True
    #: Secure rounds: when this device's last local training took longer than a round's masked window,
    #: it trains on the round's snapshot *without* joining (a roster slot it could not fill would keep
    #: a device that can out of the round) and contributes the delta, stale, to a later round.
    train_ahead: bool = True

    def __post_init__(self) -> None:
        check_id(self.federation, "federation")
        if self.aggregator_key is not None and len(self.aggregator_key) != 32:
            raise ConfigError("aggregator_key", "must be a 32-byte Ed25519 public key")
        if self.chunk_limit < 1024:
            raise ConfigError("chunk_limit", "must be >= 1024 bytes")
        if (self.identity is None) != (self.directory is None):
            raise ConfigError("identity", "secure aggregation needs both identity and directory")
        if self.identity is not None and self.aggregator_key is None:
            raise ConfigError("aggregator_key", "secure aggregation needs the aggregator's public key")

    @property
    def secure(self) -> bool:
        return self.identity is not None

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id


@dataclass
class EdgeStats:
    snapshots: int = 0
    deltas: int = 0  # snapshots reached by applying a delta
    rounds_joined: int = 0
    #: Messages and steps this device refused or that failed, by rule (bounded).
    faults: FaultCounter = field(default_factory=FaultCounter)
    #: Local trainings that raised (each is discarded; the device trains again in a later round).
    failed_trainings: int = 0
    #: Staleness of every delta this device contributed (secure rounds).
    staleness: list[int] = field(default_factory=list)


@dataclass
class _Pending:
    """A delta in the making (or ready): trained from snapshot ``base`` on ``blocks``."""

    base: int
    blocks: tuple[str, ...] | None
    task: asyncio.Task[TrainResult]
    dim: int


class EdgeClient:
    """``async with EdgeClient(cfg, trainer) as device: await device.run(stop)``."""

    def __init__(self, config: EdgeConfig, trainer: LocalTrainer) -> None:
        self.config = config
        self.trainer = trainer
        self.topics = Topics(config.federation)
        self._verify_key = nacl.signing.VerifyKey(config.aggregator_key) if config.aggregator_key else None
        self.version = -1
        self.weights: np.ndarray | None = None
        self.snapshot: ModelSnapshot | None = None
        self.announce: RoundAnnounce | None = None
        self.contributed: set[int] = set()
        self.stats = EdgeStats()
        #: Contributions kept until the aggregator confirms them, re-sent on cue (edge_client/delivery.py).
        self.outbox = Outbox(config.client_id)
        self._reassembler = Reassembler(max_total=config.max_snapshot_bytes)
        self._training: asyncio.Task[None] | None = None
        self._updated = asyncio.Event()
        cid = config.client_id
        #: Per block set, how to train it within ``config.memory_budget``.
        self._plans: dict[tuple[str, ...] | None, TrainingPlan] = {}
        presence = Presence(
            self.topics.status(cid),
            online=encode(self._presence(True)),
            offline=encode(self._presence(False)),
        )
        subscriptions = [self.topics.model_all, self.topics.round_all, f"{self.topics.inbox(cid)}/#"]
        if config.use_deltas:
            subscriptions.append(self.topics.delta_all)
        self.conn = MqttConnection(config.mqtt, subscriptions, presence)
        self._secagg = (
            SecAggClient(config.federation, cid, config.identity, config.aggregator_key, config.directory)
            if config.identity is not None and config.aggregator_key is not None and config.directory
            else None
        )
        self._secure: SecureParticipation | None = None
        self._pending: _Pending | None = None
        #: Seconds the last local training took (measured; before the first, estimated by ``run``).
        self.last_train_s: float | None = None
        self._following_full = True  # subscribed to the full snapshot topic
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called with the name of each secure phase this device completes (observability, fault tests).
        self.phase_hook: Callable[[str], None] | None = None
        #: Keep a copy of each encoded (pre-mask) vector on ``secure_round.encoded`` (tests, audits).
        self.keep_encoded = False

    @property
    def client_id(self) -> str:
        return self.config.client_id

    async def __aenter__(self) -> EdgeClient:
        await self._estimate_training_time()
        await self.conn.__aenter__()  # online (presence) only once it can act on what it receives
        return self

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

    async def __aexit__(self, *exc_info: object) -> None:
        self.trainer.interrupt()  # the worker thread would otherwise hold the process until it finished
        for task in [self._training, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.conn.close()

    async def crash(self) -> None:
        """Vanish as a crash or a dead link would: no DISCONNECT (the broker fires the last will after its
        delay) and no further part in the current round. Used by fault tests and the fleet simulator."""
        self.phase_hook = None
        self._secure = None
        for task in list(self._tasks):
            task.cancel()
        self.conn.abort()
        await self.conn.close(graceful=False)

    @property
    def secure_round(self) -> SecureParticipation | None:
        return self._secure

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Handle messages until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            msg = await self.conn.next_message(timeout=0.5)
            if msg is None:
                continue
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
            self.handle(str(msg.topic), payload)

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

    # -- incoming --------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one incoming message; bad input is logged and dropped, never raised."""
        if not payload:
            return  # a retained message being cleared
        try:
            if topic == self.topics.round:
                announce = decode(payload, RoundAnnounce)
                self._on_round(announce)
                self.outbox.round_ended(announce.round_id - 1)
                self._redeliver("round", announce.round_id)
            elif topic == self.topics.roster:
                roster = decode(payload, Roster)
                if self._secure is not None:
                    self._spawn(self._secure.on_roster(roster))
                self._redeliver("roster", roster.round, [m.device for m in roster.members])
            elif topic == self.topics.notice:
                notice = decode(payload, SurvivorList)
                if self._secure is not None:
                    self._spawn(self._secure.on_notice(notice))
                self._redeliver("notice", notice.round, notice.devices, notice.phase)
            elif topic.startswith(self.topics.delta):
                index = self.topics.parse_delta_chunk(topic)
                update = self._reassembler.feed("delta", index, payload, self.config.max_snapshot_bytes)
                if update is not None:
                    if not isinstance(update, ModelSnapshot):
                        raise ProtocolError(f"expected a model update on {topic}, got {update.TYPE}")
                    self._on_delta(update)
            elif topic.startswith(self.topics.inbox(self.client_id)):
                index = self.topics.parse_inbox(self.client_id, topic)
                batch = self._reassembler.feed("inbox", index, payload, self.config.max_snapshot_bytes)
                if batch is not None:
                    if not isinstance(batch, ShareBatch) or batch.device != self.client_id:
                        raise ProtocolError("inbox message is not a share batch for this device")
                    if self._secure is not None:
                        self._spawn(self._secure.on_inbox(batch))
            else:
                index = self.topics.parse_model_chunk(topic)
                msg = self._reassembler.feed("model", index, payload, self.config.max_snapshot_bytes)
                if msg is not None:
                    if not isinstance(msg, ModelSnapshot):
                        raise ProtocolError(f"expected a model snapshot on {topic}, got {msg.TYPE}")
                    self._on_snapshot(msg)
        except Exception as exc:  # the per-message fault boundary: one message never stops the device
            rule = rule_of(exc)
            self.stats.faults.record("", topic, rule, str(exc))
            log.warning("device=%s dropped message topic=%s rule=%s: %s", self.client_id, topic, rule, exc,
                        exc_info=exc if rule == INTERNAL_ERROR else None)  # fmt: skip

    def _on_snapshot(self, snapshot: ModelSnapshot) -> None:
        if snapshot.federation != self.config.federation:
            raise ProtocolError(f"snapshot for federation {snapshot.federation!r}")
        if snapshot.version <= self.version:
            return
        weights = snapshot_weights(snapshot, self._verify_key)
        if self.weights is not None and weights.shape != self.weights.shape:
            raise ProtocolError("snapshot layout changed size")
        if weights.shape != (self.trainer.model.dim,):
            raise ProtocolError(
                f"snapshot has {weights.size} parameters, local model {self.trainer.model.dim}"
            )
        self._install(weights, snapshot)
        if self.config.use_deltas and self._following_full:
            # Up to date: from now on the (smaller) deltas are enough.
            self._following_full = False
            self._spawn(self.conn.unsubscribe(self.topics.model_all))

    def _on_delta(self, update: ModelSnapshot) -> None:
        if update.federation != self.config.federation:
            raise ProtocolError(f"update for federation {update.federation!r}")
        if update.version <= self.version:
            return
        if update.encoding != DELTA:
            self._on_snapshot(update)  # the aggregator sent the full snapshot (smaller than a delta)
            return
        if update.base_version != self.version or self.weights is None:
            if not self._following_full:
                log.info("device=%s is on v%d, update is v%d->v%d: fetching the full snapshot",
                         self.client_id, self.version, update.base_version, update.version)  # fmt: skip
                self._following_full = True
                self._spawn(self.conn.subscribe(self.topics.model_all))
            return
        weights = apply_delta_snapshot(update, self.weights, self._verify_key)
        self.stats.deltas += 1
        self._install(weights, update)

    def _install(self, weights: np.ndarray, snapshot: ModelSnapshot) -> None:
        self.weights, self.version, self.snapshot = weights, snapshot.version, snapshot
        self.stats.snapshots += 1
        self.outbox.round_ended(snapshot.round_id)  # that round's contributions are in (or out) for good
        self._updated.set()
        log.info("device=%s has snapshot v%d", self.client_id, snapshot.version)
        self._maybe_train()

    def _on_round(self, announce: RoundAnnounce) -> None:
        if announce.federation != self.config.federation:
            raise ProtocolError(f"round for federation {announce.federation!r}")
        if self._verify_key is not None:
            verify(announce, self._verify_key)
        if self.announce is not None and announce.round_id < self.announce.round_id:
            raise ProtocolError(f"replayed announcement of round {announce.round_id}")
        if self._secure is not None and announce.round_id > self._secure.round_id:
            self._secure.close_masked_phase()
        self.announce = announce
        self._maybe_train()

    def _redeliver(
        self, message: str, round_id: int, members: list[str] | None = None, notice_phase: str | None = None
    ) -> None:
        """The aggregator (re)published a phase-opening message: re-send what that phase still lacks."""
        kind = phase_opened_by(message, self.config.secure, notice_phase)
        entry = self.outbox.opened(round_id, kind, members) if kind is not None else None
        if entry is not None:
            self._spawn(self._quiet(self.outbox.resend(entry)))

    @staticmethod
    async def _quiet(step: Coroutine[object, object, bool]) -> None:
        await step

    # -- participation ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run one step (a secure phase, a (un)subscribe) as a task that can fail only into the log."""
        where = f"device={self.client_id} {getattr(coro, '__qualname__', 'step')}"

        def count(exc: BaseException) -> None:
            self.stats.faults.record("", "", rule_of(exc), str(exc))

        task = asyncio.create_task(guarded(coro, where=where, on_error=count))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _joinable(self) -> RoundAnnounce | None:
        a = self.announce
        wanted = PHASE_KEYS if a is not None and a.config.get("mode") == "secure" else PHASE_COLLECT
        if a is None or a.phase != wanted or a.round_id in self.contributed or time.time() >= a.deadline:
            return None
        if wanted == PHASE_KEYS:
            # Secure rounds may take a delta trained on an older snapshot (semi-asynchronous).
            return (
                a
                if self._secagg is not None and (self._pending is not None or a.base_version == self.version)
                else None
            )
        if a.base_version != self.version or self.weights is None:
            return None
        return a

    def _maybe_train(self) -> None:
        announce = self._joinable()
        if announce is None:
            return
        if announce.phase == PHASE_KEYS:
            self._join_secure(announce)
            return
        if self._training is not None and not self._training.done():
            return
        self._training = asyncio.create_task(self._participate(announce), name=f"train-{self.client_id}")

    def _join_secure(self, announce: RoundAnnounce) -> None:
        """Join a secure round with a fresh delta, or with a ready one trained on an older snapshot."""
        assert self._secagg is not None
        self.contributed.add(announce.round_id)
        dp = announce.config.get("dp") or {}
        q = dp.get("sampling_q") if isinstance(dp, dict) else None
        if isinstance(q, float) and q < 1.0 and _SAMPLER.random() >= q:
            # Poisson self-sampling: the privacy amplification the accountant assumes (DESIGN.md §7).
            log.info("device=%s sat out round %d (sampled with q=%g)", self.client_id, announce.round_id, q)
            return
        policy = StalenessPolicy.from_dict(
            announce.config.get("staleness") or {**StalenessPolicy().to_dict()}
        )
        blocks = announce.config.get("blocks")
        blocks = tuple(blocks) if isinstance(blocks, list) else None
        pending = self._pending
        fresh = pending is not None and pending.base == announce.base_version
        if pending is not None and pending.task.done() and pending.task.exception() is not None:
            pending = self._pending = None  # a failed training (logged when it failed): train afresh
        if pending is not None and (
            not policy.accepts(announce.base_version - pending.base) or (fresh and pending.blocks != blocks)
        ):
            log.info("device=%s discards its delta on v%d (round %d is on v%d)", self.client_id, pending.base,
                     announce.round_id, announce.base_version)  # fmt: skip
            pending = self._pending = None
        if pending is not None and pending.blocks != blocks:
            # A stale delta of other blocks: the rotation brings its blocks back within a few rounds, so
            # keep it for one of those (until it ages out) rather than throw the training away.
            log.info("device=%s keeps its delta of blocks %s for a later round than %d",
                     self.client_id, pending.blocks, announce.round_id)  # fmt: skip
            return
        if pending is not None and not pending.task.done() and pending.base != announce.base_version:
            # Still training on an older snapshot: contribute it, stale, to a later round.
            log.info(
                "device=%s still training on v%d; skips round %d",
                self.client_id,
                pending.base,
                announce.round_id,
            )
            return
        if pending is None:
            if self.weights is None or self.version != announce.base_version:
                return  # no usable delta and not the round's snapshot: wait for the next one
            if self._training_busy():
                # A discarded training is still running: one training at a time on the trainer.
                log.info("device=%s still finishing a discarded training; skips round %d", self.client_id,
                         announce.round_id)  # fmt: skip
                return
            pending = self._start_training(blocks)
            window = _masked_window(announce)
            if self.config.train_ahead and self.last_train_s is not None and self.last_train_s > window:
                log.info("device=%s trains ahead on v%d, not in round %d: its last training took %.1f s, "
                         "the masked window is %.1f s", self.client_id, pending.base, announce.round_id,
                         self.last_train_s, window)  # fmt: skip
                return
        round_id = announce.round_id
        tau = announce.base_version - pending.base

        async def send(kind: str, message: Message) -> None:
            payload = encode(message)

            async def transmit() -> None:
                remaining = max(1.0, announce.deadline - time.time())
                await publish_framed(
                    self.conn,
                    self.topics.round_msg(round_id, kind, self.client_id),
                    lambda i: self.topics.round_chunk(round_id, kind, self.client_id, i),
                    payload,
                    self.config.chunk_limit,
                    expiry_s=remaining,
                )

            await self.outbox.deliver(round_id, kind, len(payload), transmit)

        def on_phase(phase: str) -> None:
            if phase == "masked":
                self.stats.rounds_joined += 1
                self.stats.staleness.append(tau)
                if self._pending is pending:
                    self._pending = None  # a delta is contributed once
            if self.phase_hook is not None:
                self.phase_hook(phase)

        self._secure = SecureParticipation(
            self._secagg, announce, pending.task, pending.dim, send, on_phase, tau, policy, self.keep_encoded
        )
        self._spawn(self._secure.start())
        log.info("device=%s joined secure round %d (staleness %d)", self.client_id, round_id, tau)

    def _presence(self, online: bool) -> PresenceMsg:
        """Presence with the memory budget and, if one is set, this model's activation profile."""
        cid, budget = self.config.client_id, self.config.memory_budget
        if not online or budget is None:
            return PresenceMsg(cid, online, time.time())
        t = self.trainer
        profile = activation_profile(t.model, t.features, t.labels, t.loss_fn)
        log.info("device=%s memory budget %d B, activations per example by block %s", cid, budget, profile)
        return PresenceMsg(cid, True, time.time(), budget, profile)

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
            plan = plan_training(t.model, t.features, t.labels, t.config, t.loss_fn, blocks, budget)
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

    def _start_training(self, blocks: tuple[str, ...] | None) -> _Pending:
        """Train on the current snapshot in a worker thread; only ``blocks`` (if given) are trainable."""
        assert self.weights is not None and not self._training_busy()
        model = self.trainer.model
        weights = self.weights
        dim = model.dim if blocks is None else sum(s.stop - s.start for s in model.block_slices(blocks))

        task = asyncio.create_task(asyncio.to_thread(self._train_within_budget, weights, blocks))
        task.add_done_callback(self._record_train_time)
        self._training = asyncio.create_task(self._await_quietly(task))
        self._pending = _Pending(self.version, blocks, task, dim)
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

    async def _participate(self, announce: RoundAnnounce) -> None:
        round_id = announce.round_id
        assert self.weights is not None
        try:
            result: TrainResult = await asyncio.to_thread(self._train_within_budget, self.weights, None)
            remaining = announce.deadline - time.time()
            if remaining <= 0:
                log.info("device=%s round=%d: trained too late for the window", self.client_id, round_id)
                return
            update = ModelUpdate(
                round_id=round_id,
                sender=self.client_id,
                base_version=announce.base_version,
                num_examples=result.num_examples,
                encoding="f32",
                dim=int(result.delta.size),
                data=np.ascontiguousarray(result.delta, dtype="<f4").tobytes(),
                metrics={"loss": result.loss, "train_s": result.seconds},
            )
            payload = encode(update)

            async def transmit() -> None:
                await publish_framed(
                    self.conn,
                    self.topics.round_msg(round_id, UPDATE, self.client_id),
                    lambda i: self.topics.round_chunk(round_id, UPDATE, self.client_id, i),
                    payload,
                    self.config.chunk_limit,
                    expiry_s=max(1.0, announce.deadline - time.time()),
                )

            # Kept until the round ends, re-sent on the round's re-announcement (after reconnects).
            sent = await self.outbox.deliver(round_id, UPDATE, len(payload), transmit)
            self.contributed.add(round_id)
            self.stats.rounds_joined += 1
            log.info("device=%s round=%d update %s (loss %.3f)", self.client_id, round_id,
                     "sent" if sent else "kept for a re-send", result.loss)  # fmt: skip
        except FedmqError as exc:
            log.warning("device=%s round=%d could not contribute: %s", self.client_id, round_id, exc)
        except Exception as exc:  # a failed training: logged, and the device joins a later round
            self.stats.failed_trainings += 1
            self.stats.faults.record("", "", "training-failed", f"{type(exc).__name__}: {exc}")
            log.error("device=%s round=%d local training failed", self.client_id, round_id, exc_info=exc)
        finally:
            # A newer round or snapshot may have arrived while we trained.
            asyncio.get_running_loop().call_soon(self._maybe_train)


def _masked_window(announce: RoundAnnounce) -> float:
    """Seconds a secure round gives devices to train and send the masked input (inf if unannounced)."""
    windows = announce.config.get("windows")
    masked = windows.get("masked") if isinstance(windows, dict) else None
    return float(masked) if isinstance(masked, (int, float)) else math.inf
