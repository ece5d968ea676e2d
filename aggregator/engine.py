"""The aggregator's round engine: announce, collect until deadline or target, close or abandon.

One round, plain mode (secure aggregation adds phases between announce and close):

1. Announce ``RoundAnnounce(round r, base version v, deadline)`` retained on ``fl/<fed>/round``.
2. Ingest updates on ``fl/<fed>/r/<r>/update/<cid>``: validated, journaled, counted once per device.
3. At ``target_clients`` updates or at the deadline: with ``>= min_clients`` updates, average by
   example count, take a server optimiser step, write snapshot v+1 atomically, then publish it
   retained; otherwise abandon the round without touching the model. Either way a retained
   ``RoundResult`` says what happened, and the next round starts.

After a crash it reloads the newest snapshot and acts as :func:`aggregator.rounds.recover` decides.
The policy (plans, recovery, blocks, expansion) is in ``aggregator/rounds.py``; this class does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aggregator import rounds
from aggregator.accumulator import WeightedMean
from aggregator.config import AggregatorConfig
from aggregator.intake import Intake
from aggregator.model import load_snapshot, restore_accountant
from aggregator.optimizer import ServerOptimizer
from aggregator.plain import PlainRound
from aggregator.publishing import Publishing
from aggregator.republish import RecordingOutbox
from aggregator.rounds import Recovery, RoundPlan
from aggregator.secure import SecureRound
from aggregator.store import RoundRecord, Store
from shared.dp import PrivacyAccountant
from shared.errors import FedmqError, StoreError
from shared.layout import ModelLayout
from shared.mqtt import MqttConnection, MqttTimeout
from shared.signing import load_or_create_key, sign
from shared.snapshots import make_delta_snapshot, make_snapshot, snapshot_weights
from shared.supervision import INTERNAL_ERROR, FaultCounter, SupervisionError, Supervisor
from shared.topics import Topics
from shared.wire import (
    PHASE_ABANDONED,
    PHASE_CLOSED,
    PHASE_COLLECT,
    PHASE_KEYS,
    ModelSnapshot,
    RoundAnnounce,
    RoundResult,
    encode,
)

log = logging.getLogger(__name__)

RoundObserver = Callable[[RoundResult, np.ndarray], None]


class Aggregator(Intake, Publishing):
    """Runs rounds for one federation. ``async with Aggregator(cfg, initial=path) as agg: await agg.run(5)``.

    ``observers`` are called with each round's result and the new weights (used by the simulator to
    evaluate the model; the engine itself never needs torch).
    """

    def __init__(
        self,
        config: AggregatorConfig,
        initial: Path | ModelSnapshot | None = None,
        observers: list[RoundObserver] | None = None,
    ) -> None:
        self.config = config
        self.topics = Topics(config.federation)
        self.observers = list(observers or [])
        self._initial = initial
        self.store: Store | None = None
        self.key = load_or_create_key(Path(config.store_dir) / "aggregator.key")
        self.version = -1
        self.weights = np.zeros(0, np.float32)
        self.layout: ModelLayout | None = None
        self.optimizer: ServerOptimizer | None = None
        self._snapshot_bytes = b""
        self._published_weights = np.zeros(0, np.float32)  # what devices decode from _snapshot_bytes
        self._delta_bytes = b""  # the retained update for holders of version - 1 (delta or full)
        self._round: PlainRound | None = None
        self._secure: SecureRound | None = None
        self._last_announce: RoundAnnounce | None = None
        self.last_secure: SecureRound | None = None
        #: Declared training-memory budgets of online devices (from their retained presence).
        self.memory_budgets: dict[str, int] = {}
        #: Their per-block activation costs (``Presence.activation_profile``).
        self.activation_profiles: dict[str, list[int]] = {}
        dp = config.dp
        self.noise_multiplier = dp.resolved_noise_multiplier() if dp.enabled else None
        self.accountant = PrivacyAccountant(dp.delta, dp.sampling_q) if dp.enabled and dp.delta else None
        self._conn: MqttConnection | None = None
        self._outbox: RecordingOutbox | None = None
        #: Owns the long-lived tasks (intake); a task that keeps failing ends :meth:`run` with the cause.
        self.supervisor = Supervisor("aggregator")
        #: Messages refused at the per-message boundary, by rule (bounded; see ``dropped``).
        self.faults = FaultCounter()
        #: Rounds the round loop lost to an unexpected error (each is abandoned, then the loop goes on).
        self.round_failures = 0
        # Messages queued at the broker for our persistent session arrive as soon as we connect; hold
        # them until the open round has been restored from the journal, or they would look "late".
        self._accepting = asyncio.Event()
        self.results: list[RoundResult] = []

    @property
    def dropped(self) -> list[tuple[str, str]]:
        """The most recent refused messages as (sender or topic, reason), oldest first."""
        return [(r.sender, r.detail) for r in self.faults.recent]

    @property
    def published_weights(self) -> np.ndarray:
        """The weights devices decode from the current snapshot (the master may be more precise)."""
        return self._published_weights

    @property
    def verify_key(self) -> bytes:
        return bytes(self.key.verify_key)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Aggregator:
        self.store = Store(Path(self.config.store_dir))
        self._load_model()
        self._conn = MqttConnection(self.config.mqtt, self._subscriptions(), on_connect=[self._republish])
        await self._conn.__aenter__()
        self._start_summing()
        self._outbox = RecordingOutbox(self._conn, self.topics, chunk_limit=self.config.chunk_limit)
        self.supervisor.start("intake", self._intake_loop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.supervisor.close()
        if self._conn is not None:
            await self._conn.close()
        if self.store is not None:
            self.store.close()

    def _load_model(self) -> None:
        store = self.store_or_fail()
        if self.accountant is not None:
            self.accountant = restore_accountant(store, self.config.dp) or self.accountant
        loaded = load_snapshot(store, self._initial, config=self.config, key=self.key)
        snapshot = loaded.snapshot
        self.layout = ModelLayout.from_wire(snapshot.layout)
        self.weights = snapshot_weights(snapshot)
        self._published_weights = self.weights
        self.version = snapshot.version
        self.optimizer = ServerOptimizer(self.config.optimizer, self.layout.dim, loaded.optimizer_state)
        self._snapshot_bytes = encode(snapshot)
        if not loaded.stored:
            store.write_snapshot(0, -1, self._snapshot_bytes, {})

    # -- main loop -------------------------------------------------------------------------------

    async def run(
        self, max_rounds: int | None = None, stop: asyncio.Event | None = None
    ) -> list[RoundResult]:
        """Run rounds until ``max_rounds`` have ended (closed or abandoned), ``stop`` is set or the privacy
        budget is spent; returns the results of the rounds this call ran.

        Raises :class:`SupervisionError` when the intake keeps failing or rounds keep failing
        unexpectedly (``AggregatorConfig.max_round_failures`` in a row): the caller should exit with it.
        """
        assert self._conn is not None and self.store is not None
        first = len(self.results)
        await self.supervisor.watch(self._run_rounds(max_rounds, stop))
        return self.results[first:]

    async def _run_rounds(self, max_rounds: int | None, stop: asyncio.Event | None) -> None:
        if not await self._wait_connected(stop):
            return
        await self._publish_snapshot()
        done = 0
        failures = 0  # unexpected round failures in a row
        while (max_rounds is None or done < max_rounds) and not (stop and stop.is_set()):
            try:
                if self.config.mode == "secure":
                    if not await self._secure_round(stop):
                        break
                else:
                    opened = self._resume_or_open()
                    self._accepting.set()
                    await self._publish_announce(opened.announce)
                    await opened.wait(stop)
                    await self._close(opened)
                failures = 0
            except Exception as exc:  # the round loop's fault boundary
                failures += 1
                self.round_failures += 1
                log.error("round loop failed unexpectedly (%d in a row)", failures, exc_info=exc)
                await self._abandon_open_round(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}")
                if failures >= self.config.max_round_failures:
                    raise SupervisionError(
                        f"aggregator: {failures} rounds in a row failed; last: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(min(5.0, 0.2 * 2 ** (failures - 1)))
            done += 1
            if self.config.round_gap_s:
                await asyncio.sleep(self.config.round_gap_s)

    async def _abandon_open_round(self, reason: str) -> None:
        """After an unexpected failure: end the round the store still has open, and forget its state."""
        self._round = None
        self._secure = None
        try:
            recovery, last = self._recovery()
            if recovery is Recovery.MARK_CLOSED:
                self.store_or_fail().finish_round(last.round_id, "closed", last.contributors, "recovered")
            elif recovery is not Recovery.NONE:
                await self._abandon(last.round_id, last.contributors, reason)
        except Exception:  # the next round's start retries the same recovery
            log.exception("could not mark the failed round as abandoned")

    def store_or_fail(self) -> Store:
        if self.store is None:
            raise StoreError("the aggregator is not started (use it as an async context manager)")
        return self.store

    def _recovery(self) -> tuple[Recovery, RoundRecord]:
        """What :func:`aggregator.rounds.recover` says about the store's last round (and that round)."""
        store = self.store_or_fail()
        last = store.last_round()
        stored = store.latest_snapshot() if last is not None and last.status == "open" else None
        recovery = rounds.recover(
            last, None if stored is None else stored.round_id, secure=self.config.mode == "secure"
        )
        return recovery, last  # type: ignore[return-value]  # NONE is the only answer for None

    async def _wait_connected(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the broker (warning periodically); False if ``stop`` is set first."""
        assert self._conn is not None
        while not (stop and stop.is_set()):
            try:
                await self._conn.wait_connected()
                return True
            except MqttTimeout as exc:  # a permanent refusal (wrong password, TLS) ends run() instead
                log.warning("aggregator still waiting for the broker: %s", exc)
        return False

    def _announce(self, round_id: int, *, plan: RoundPlan, phase: str, opened_at: float,
                  deadline: float, base_version: int) -> RoundAnnounce:  # fmt: skip
        announce = rounds.announcement(self.config, round_id, plan, phase=phase, opened_at=opened_at,
                                       deadline=deadline, base_version=base_version)  # fmt: skip
        return sign(announce, self.key)

    def _plain_round(self, announce: RoundAnnounce) -> PlainRound:
        assert self.layout is not None
        self._round = PlainRound(announce, WeightedMean(self.layout.dim), self.config.max_update_bytes,
                                 clock=self.clock)
        return self._round

    def _resume_or_open(self) -> PlainRound:
        store = self.store_or_fail()
        now = self.clock.time()
        recovery, last = self._recovery()
        if recovery is Recovery.MARK_CLOSED:
            # Crashed after writing the snapshot but before marking the round: it did close.
            store.finish_round(last.round_id, "closed", last.contributors, "recovered")
        elif recovery is Recovery.RESUME:
            announce = self._announce(last.round_id, phase=PHASE_COLLECT, opened_at=last.opened_at,
                                      deadline=last.deadline, base_version=last.base_version,
                                      plan=rounds.plan_plain_round())  # fmt: skip
            opened = self._plain_round(announce)
            frames = store.frames(last.round_id)
            for topic, payload in frames:
                self._ingest(topic, payload, replay=True)
            log.info("round=%d resumed from journal: %d frames, %d updates, %.1fs left", last.round_id,
                     len(frames), len(opened.contributors), last.deadline - now)  # fmt: skip
            return opened
        round_id = rounds.next_round_id(store.last_round())
        deadline = now + self.config.round_window_s
        store.open_round(round_id, self.version, now, deadline)
        announce = self._announce(round_id, phase=PHASE_COLLECT, opened_at=now, deadline=deadline,
                                  base_version=self.version, plan=rounds.plan_plain_round())  # fmt: skip
        log.info("round=%d opened on v%d, window %.1fs", round_id, self.version, self.config.round_window_s)
        return self._plain_round(announce)

    async def _close(self, opened: PlainRound) -> None:
        self._round = None  # late updates for this round are now "wrong round"
        count = len(opened.contributors)
        if count >= self.config.min_clients:
            metrics = {"total_weight": opened.accumulator.total_weight, **opened.mean_metrics()}
            await self._apply(opened.round_id, opened.accumulator.mean(), count, metrics)
        else:
            reason = f"{count} updates < min_clients {self.config.min_clients} at the deadline"
            await self._abandon(opened.round_id, count, reason)

    async def _apply(
        self, round_id: int, mean_delta: np.ndarray, count: int, metrics: dict[str, float]
    ) -> None:
        """Server step, durable snapshot, then publish: the model only moves forward."""
        assert self.store is not None and self.optimizer is not None and self.layout is not None
        new_weights = self.optimizer.step(self.weights, mean_delta)
        version = self.version + 1
        snapshot = make_snapshot(self.config.federation, version, round_id, self.layout, new_weights,
                                 self.key, encoding=self.config.snapshot_encoding)  # fmt: skip
        snapshot_bytes = encode(snapshot)
        self.store.write_snapshot(version, round_id, snapshot_bytes, self.optimizer.state)
        self.store.finish_round(round_id, "closed", count, noise=metrics.get("noise_multiplier"))
        published = snapshot_weights(snapshot)
        if self.config.publish_deltas:
            update = make_delta_snapshot(snapshot, self.version, self._published_weights, published, self.key)
            self._delta_bytes = encode(update)
        self.weights, self.version, self._snapshot_bytes = new_weights, version, snapshot_bytes
        self._published_weights = published
        log.info("round=%d closed with %d updates -> v%d", round_id, count, version)
        await self._publish_snapshot()
        await self._finish(RoundResult(round_id, PHASE_CLOSED, version, count, "", metrics))

    async def _abandon(self, round_id: int, count: int, reason: str) -> None:
        assert self.store is not None
        self.store.finish_round(round_id, "abandoned", count, reason)
        log.warning("round=%d abandoned: %s; model stays at v%d", round_id, reason, self.version)
        await self._finish(RoundResult(round_id, PHASE_ABANDONED, self.version, count, reason))

    async def _finish(self, result: RoundResult) -> None:
        assert self.store is not None and self._outbox is not None
        self.store.prune_journal(result.round_id - self.config.keep_journal_rounds)
        self.results.append(result)
        await self._logged(self._outbox.result(result), f"publishing the result of round {result.round_id}")
        for observer in self.observers:
            try:
                observer(result, self.weights)
            except Exception:
                log.exception("round observer failed")

    # -- secure rounds ---------------------------------------------------------------------------

    async def _secure_round(self, stop: asyncio.Event | None) -> bool:
        """One secure round; False when the privacy budget does not allow another round."""
        assert self.store is not None and self.layout is not None and self._outbox is not None
        if not rounds.budget_allows(self.accountant, self.config.dp, self.noise_multiplier):
            return False
        recovery, last = self._recovery()
        if recovery is Recovery.MARK_CLOSED:
            self.store.finish_round(last.round_id, "closed", last.contributors, "recovered")
        elif recovery is Recovery.ABANDON:
            await self._abandon(last.round_id, 0, "aggregator restarted during a secure round")
        round_id = rounds.next_round_id(self.store.last_round())
        now = self.clock.time()
        deadline = now + self.config.windows.total
        self.store.open_round(round_id, self.version, now, deadline)
        choice = self._round_blocks(round_id)
        plan = rounds.plan_secure_round(
            self.config, seed=os.urandom(32), blocks=choice.blocks, noise_multiplier=self.noise_multiplier
        )
        slices = [(b, self.layout.slice_of_block(b)) for b in choice.blocks] if choice.blocks else None
        round_dim = sum(s.stop - s.start for _, s in slices) if slices else self.layout.dim
        secure = self._open_secure(round_id, plan, round_dim)
        announce = self._announce(round_id, phase=PHASE_KEYS, opened_at=now, deadline=deadline,
                                  base_version=self.version, plan=plan)  # fmt: skip
        self._secure = self.last_secure = secure
        self._accepting.set()
        await self._publish_announce(announce)
        log.info("round=%d opened (secure) on v%d", round_id, self.version)
        try:
            outcome = await secure.run(self._outbox, stop)
        except FedmqError as exc:
            count = len(secure.server.masked) if secure.server is not None else len(secure.adverts)
            await self._abandon(round_id, count, str(exc))
            return True
        finally:
            self._secure = None
        metrics = {"total_weight": outcome.total_weight, "dropped": float(outcome.dropped)}
        if self.accountant is not None and outcome.noise_multiplier is not None:
            self.accountant.record_round(outcome.noise_multiplier)
            metrics["noise_multiplier"] = outcome.noise_multiplier
            metrics["epsilon"] = self.accountant.epsilon()
            metrics["delta"] = float(self.config.dp.delta or 0.0)
            log.info(
                "round=%d privacy: proven noise multiplier %.4f, epsilon %.4f (proven bound) at delta %g "
                "after %d rounds",
                round_id, outcome.noise_multiplier, metrics["epsilon"], metrics["delta"],
                self.accountant.rounds,
            )  # fmt: skip
        scales = choice.scales if self.config.rotation_step else None
        expanded = rounds.expand_partial(outcome.mean_delta, dim=self.layout.dim, slices=slices,
                                         scales=scales)  # fmt: skip
        metrics.update(expanded.metrics)
        await self._apply(round_id, expanded.mean, outcome.contributors, metrics)
        return True

    def _round_blocks(self, round_id: int) -> rounds.BlockChoice:
        """This round's blocks under the devices' declared budgets (:func:`rounds.choose_round_blocks`)."""
        if not self.config.partial_training or self.layout is None:
            return rounds.BlockChoice()
        return rounds.choose_round_blocks(
            self.layout.blocks(),
            round_id,
            budgets=self.memory_budgets.values(),
            profiles=self.activation_profiles.values(),
        )
