"""The device: keeps the latest global model, trains when a round it can join is open, and publishes
its update inside the round's window. It rides out broker disconnects (retained snapshot and round
messages bring it up to date on every subscribe; contributions the aggregator has not confirmed are
re-sent, ``edge_client/delivery.py``), and a device that comes online late joins the open round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine

import nacl.signing
import numpy as np

from edge_client.config import EdgeConfig, EdgeStats
from edge_client.delivery import DeliveringOutbox
from edge_client.local import LocalTraining, Pending
from edge_client.memory import TrainingPlan, activation_profile
from edge_client.participation import DevicePolicy, HeldDelta, LocalState, decide
from edge_client.secure import INBOX_TYPES, ROSTER_TYPES, Listed, SecureParticipation
from edge_client.trainer import LocalTrainer, TrainResult
from shared.chunking import Reassembler
from shared.clock import SYSTEM_CLOCK, Clock
from shared.errors import FedmqError, IncompatibleError, ProtocolError
from shared.following import RoundFollowing
from shared.mqtt import MqttConnection, Presence
from shared.secagg import SecAggClient
from shared.signing import verify
from shared.snapshots import DELTA, apply_delta_snapshot, snapshot_weights
from shared.supervision import INTERNAL_ERROR, guarded, rule_of
from shared.timing import AggregatorTime
from shared.topics import Topics
from shared.wire import (
    PHASE_COLLECT,
    PHASE_KEYS,
    ChunkReceipt,
    ModelSnapshot,
    ModelUpdate,
    RoundAnnounce,
    decode,
    encode,
)
from shared.wire import Presence as PresenceMsg
from shared.wire.secagg import SurvivorList
from shared.wire.seeds import SeedRequest

__all__ = ["EdgeClient", "EdgeConfig", "EdgeStats"]

log = logging.getLogger(__name__)
_SAMPLER = random.SystemRandom()


class EdgeClient(LocalTraining):
    """``async with EdgeClient(cfg, trainer) as device: await device.run(stop)``; ``clock``: tests skew it."""

    def __init__(self, config: EdgeConfig, trainer: LocalTrainer, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.times = AggregatorTime(clock)  # round deadlines on this device's monotonic clock
        self.trainer = trainer
        self.topics = Topics(config.federation)
        self._verify_key = nacl.signing.VerifyKey(config.aggregator_key) if config.aggregator_key else None
        self.version = -1
        self.weights: np.ndarray | None = None
        self.snapshot: ModelSnapshot | None = None
        self.announce: RoundAnnounce | None = None
        self.contributed: set[int] = set()
        self.stats = EdgeStats()
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
        subscriptions = [self.topics.model_all, self.topics.round, f"{self.topics.inbox(cid)}/#"]
        if config.use_deltas:
            subscriptions.append(self.topics.delta_all)
        self.conn = MqttConnection(config.mqtt, subscriptions, presence)
        self.outbox = DeliveringOutbox(self.conn, self.topics, cid, chunk_limit=config.chunk_limit)
        self._following = RoundFollowing(self.conn, self.topics)
        self._secagg = (
            SecAggClient(config.federation, cid, config.identity, config.aggregator_key, config.directory)
            if config.identity is not None and config.aggregator_key is not None and config.directory
            else None
        )
        self._secure: SecureParticipation | None = None
        self._pending: Pending | None = None
        #: Seconds the last local training took (measured; before the first, estimated by ``run``).
        self.last_train_s: float | None = None
        self._following_full = True  # subscribed to the full snapshot topic
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called with the name of each secure phase this device completes (observability, fault tests).
        self.phase_hook: Callable[[str], None] | None = None
        #: Keep a copy of each encoded (pre-mask) vector on ``secure_round.encoded`` (tests, audits).
        self.keep_encoded = False
        #: Set while the device shuts down: no new training or round step may start then.
        self._stopping = False

    @property
    def client_id(self) -> str:
        return self.config.client_id

    async def __aenter__(self) -> EdgeClient:
        self._stopping = False
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
        # First: a training cancelled below re-checks for a round to join as it ends, and would otherwise
        # start a new one after this loop (a task left pending, a training thread after the device left).
        self._stopping = True
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
            if (resend := self.outbox.cue(str(msg.topic), payload, self.config.secure)) is not None:
                self._spawn(resend)  # a phase (re)opened: what it still lacks from us goes again

    # -- incoming --------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one incoming message; bad input is logged and dropped, never raised."""
        if not payload:
            return  # a retained message being cleared
        try:
            if topic == self.topics.round:
                self._on_round(decode(payload, RoundAnnounce))
            elif topic == self.topics.roster:
                roster: Listed = decode(payload, ROSTER_TYPES)
                if self._secure is not None:
                    self._spawn(self._secure.on_roster(roster))
            elif topic == self.topics.notice:
                notice: SurvivorList | SeedRequest = decode(payload, (SurvivorList, SeedRequest))
                if self._secure is not None:
                    self._spawn(self._secure.on_notice(notice))
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
                if isinstance(batch, ChunkReceipt):  # what the aggregator holds of an upload of ours
                    if (resend := self.outbox.on_receipt(batch)) is not None:
                        self._spawn(resend)
                elif batch is not None:
                    if not isinstance(batch, INBOX_TYPES) or batch.device != self.client_id:
                        raise ProtocolError("inbox message is not share bundles or keys for this device")
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
        if weights.shape != (self.trainer.model.dim,):  # signed by the aggregator: a real mismatch
            raise IncompatibleError(
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
        self.times.round(announce)  # anchored on arrival
        self._maybe_train()
        self._spawn(self._following.settle(announce, getattr(self._secure, "round_id", None)))

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
        wanted = PHASE_KEYS if a is not None and a.plan.secure else PHASE_COLLECT
        if a is None or a.phase != wanted or a.round_id in self.contributed or self.times.remaining(a) <= 0:
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
        if self._stopping:
            return
        announce = self._joinable()
        if announce is None:
            return
        if announce.phase == PHASE_KEYS:
            self._join_secure(announce)
            return
        if self._training is not None and not self._training.done():
            return
        self._training = asyncio.create_task(self._participate(announce), name=f"train-{self.client_id}")

    def local_state(self) -> LocalState:
        """What this device holds, as :func:`edge_client.participation.decide` reads it."""
        pending = self._pending
        held = None
        if pending is not None:
            task = pending.task
            failed = task.done() and (task.cancelled() or task.exception() is not None)
            held = HeldDelta(pending.base, pending.blocks, done=task.done(), failed=failed)
        version = self.version if self.weights is not None else -1
        return LocalState(version, held, self._training_busy(), self.last_train_s)

    def _join_secure(self, announce: RoundAnnounce) -> None:
        """Act on :func:`edge_client.participation.decide` for a secure round."""
        assert self._secagg is not None
        self.contributed.add(announce.round_id)
        policy = DevicePolicy(train_ahead=self.config.train_ahead, sample_draw=_SAMPLER.random())
        decision = decide(announce.plan, announce.base_version, self.local_state(), policy)
        if decision.discard and self._pending is not None:
            log.info("device=%s discards its delta on v%d (round %d is on v%d)", self.client_id,
                     self._pending.base, announce.round_id, announce.base_version)  # fmt: skip
            self._pending = None
        if decision.trains:
            self._start_training(announce.plan.blocks)
        if not decision.joins:
            log.info("device=%s %s round %d: %s", self.client_id, decision.action.value, announce.round_id,
                     decision.reason)  # fmt: skip
            return
        pending = self._pending
        assert pending is not None
        round_id = announce.round_id
        tau = decision.staleness

        def on_phase(phase: str) -> None:
            if phase == "masked":
                self.stats.rounds_joined += 1
                self.stats.staleness.append(tau)
                if self._pending is pending:
                    self._pending = None  # a delta is contributed once
            if self.phase_hook is not None:
                self.phase_hook(phase)

        self._secure = SecureParticipation(self._secagg, announce, pending.task, pending.dim,
                                           outbox=self.outbox, on_phase=on_phase, staleness=tau,
                                           keep_encoded=self.keep_encoded,
                                           times=self.times.round(announce))  # fmt: skip
        self._spawn(self._following.join_then(self._secure.start()))
        log.info("device=%s joined secure round %d (staleness %d)", self.client_id, round_id, tau)

    def _presence(self, online: bool) -> PresenceMsg:
        """Presence with the memory budget and, if one is set, this model's activation profile."""
        cid, budget = self.config.client_id, self.config.memory_budget
        if not online or budget is None:
            return PresenceMsg(cid, online, self.times.clock.time())
        t = self.trainer
        profile = activation_profile(t.model, t.features, t.labels, t.loss_fn)
        log.info("device=%s memory budget %d B, activations per example by block %s", cid, budget, profile)
        return PresenceMsg(cid, True, self.times.clock.time(), budget, profile)

    async def _participate(self, announce: RoundAnnounce) -> None:
        round_id = announce.round_id
        assert self.weights is not None
        try:
            result: TrainResult = await asyncio.to_thread(self._train_within_budget, self.weights, None)
            remaining = self.times.remaining(announce)
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
            await self.outbox.update(update, expiry_s=remaining)
            self.contributed.add(round_id)
            self.stats.rounds_joined += 1
            log.info("device=%s round=%d update sent (loss %.3f)", self.client_id, round_id, result.loss)
        except FedmqError as exc:
            log.warning("device=%s round=%d could not contribute: %s", self.client_id, round_id, exc)
        except Exception as exc:  # a failed training: logged, and the device joins a later round
            self.stats.failed_trainings += 1
            self.stats.faults.record("", "", "training-failed", f"{type(exc).__name__}: {exc}")
            log.error("device=%s round=%d local training failed", self.client_id, round_id, exc_info=exc)
        finally:
            # A newer round or snapshot may have arrived while we trained (unless the device is closing).
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_soon(self._maybe_train)
