"""The aggregator's round engine: announce, collect until deadline or target, close or abandon.

One round, plain mode (secure aggregation adds phases between announce and close):

1. Announce ``RoundAnnounce(round r, base version v, deadline)`` retained on ``fl/<fed>/round``.
2. Ingest updates on ``fl/<fed>/r/<r>/update/<cid>``: each frame is validated, journaled durably,
   then counted (at most once per device).
3. At ``target_clients`` updates or at the deadline: with ``>= min_clients`` updates, average by
   example count, take a server optimiser step, write snapshot v+1 atomically, then publish it
   retained; otherwise abandon the round without touching the model. Either way a retained
   ``RoundResult`` says what happened, and the next round starts.

After a crash the engine reloads the newest snapshot file, replays the open round's journal and
either continues that round (its window is still open) or closes it at once with what it had.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aggregator.accumulator import WeightedMean
from aggregator.blocks import choose_blocks, rotation_scales
from aggregator.config import AggregatorConfig
from aggregator.optimizer import ServerOptimizer
from aggregator.republish import OpenPhase
from aggregator.secure import SecureRound
from aggregator.store import Store
from shared.chunking import Reassembler
from shared.dp import PrivacyAccountant, sum_noise_headroom
from shared.errors import FedmqError, ProtocolError, StoreError, WireError
from shared.layout import ModelLayout
from shared.mqtt import MqttConnection, publish_framed
from shared.signing import load_or_create_key, sign
from shared.snapshots import make_delta_snapshot, make_snapshot, read_initial, snapshot_weights
from shared.supervision import INTERNAL_ERROR, FaultCounter, SupervisionError, Supervisor, guarded, rule_of
from shared.topics import UPDATE, RoundTopic, Topics
from shared.wire import (
    PHASE_ABANDONED,
    PHASE_CLOSED,
    PHASE_COLLECT,
    PHASE_KEYS,
    Message,
    ModelSnapshot,
    ModelUpdate,
    RoundAnnounce,
    RoundResult,
    decode,
    encode,
)
from shared.wire import Presence as PresenceMsg

log = logging.getLogger(__name__)

RoundObserver = Callable[[RoundResult, np.ndarray], None]


@dataclass
class _OpenRound:
    announce: RoundAnnounce
    accumulator: WeightedMean
    contributors: set[str] = field(default_factory=set)
    reassembler: Reassembler = field(default_factory=Reassembler)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def round_id(self) -> int:
        return self.announce.round_id


class Aggregator:
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
        self._round: _OpenRound | None = None
        self._secure: SecureRound | None = None
        self._last_announce: RoundAnnounce | None = None
        self.last_secure: SecureRound | None = None
        #: The open secure round's roster, inboxes and notice, published again after a reconnect.
        self.open_phase = OpenPhase()
        #: Declared training-memory budgets of online devices (from their retained presence).
        self.memory_budgets: dict[str, int] = {}
        #: Their per-block activation costs (``Presence.activation_profile``).
        self.activation_profiles: dict[str, list[int]] = {}
        dp = config.dp
        self._noise_multiplier = dp.resolved_noise_multiplier() if dp.enabled else None
        self.accountant = PrivacyAccountant(dp.delta, dp.sampling_q) if dp.enabled and dp.delta else None
        self._conn: MqttConnection | None = None
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
        subscriptions = [self.topics.rounds_all, self.topics.status_all]
        self._conn = MqttConnection(self.config.mqtt, subscriptions, on_connect=[self._republish])
        await self._conn.__aenter__()
        self.supervisor.start("intake", self._intake_loop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.supervisor.close()
        if self._conn is not None:
            await self._conn.close()
        if self.store is not None:
            self.store.close()

    def _load_model(self) -> None:
        assert self.store is not None
        if self.accountant is not None:
            history = [(z, self.config.dp.sampling_q) for z in self.store.noise_history()]
            if history:
                dp = self.config.dp
                assert dp.delta is not None
                self.accountant = PrivacyAccountant.from_history(dp.delta, dp.sampling_q, history)
                log.info(
                    "privacy accountant restored: %d rounds, epsilon %.4f",
                    len(history),
                    self.accountant.epsilon(),
                )
        stored = self.store.latest_snapshot()
        if stored is not None:
            snapshot = decode(stored.snapshot, ModelSnapshot)
            state = stored.optimizer
            log.info("resuming from stored snapshot v%d (round %d)", snapshot.version, snapshot.round_id)
        elif self._initial is not None:
            initial = (
                self._initial if isinstance(self._initial, ModelSnapshot) else read_initial(self._initial)
            )
            layout = ModelLayout.from_wire(initial.layout)
            # Re-issue the initial model as our own signed v0 in the configured downlink encoding.
            snapshot = make_snapshot(
                self.config.federation,
                0,
                -1,
                layout,
                snapshot_weights(initial),
                self.key,
                self.config.snapshot_encoding,
            )
            state = {}
            log.info("starting from initial snapshot (%d parameters)", layout.dim)
        else:
            raise StoreError(f"no snapshot in {self.store.directory} and no initial model given")
        self.layout = ModelLayout.from_wire(snapshot.layout)
        self.weights = snapshot_weights(snapshot)
        self._published_weights = self.weights
        self.version = snapshot.version
        self.optimizer = ServerOptimizer(self.config.optimizer, self.layout.dim, state)
        self._snapshot_bytes = encode(snapshot)
        if stored is None:
            self.store.write_snapshot(0, -1, self._snapshot_bytes, {})

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
                    await self._collect(opened, stop)
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
        assert self.store is not None
        self._round = None
        self._secure = None
        try:
            last = self.store.last_round()
            if last is None or last.status != "open":
                return
            stored = self.store.latest_snapshot()
            if stored is not None and stored.round_id >= last.round_id:
                self.store.finish_round(last.round_id, "closed", last.contributors, "recovered")
            else:
                await self._abandon(last.round_id, last.contributors, reason)
        except Exception:  # the next round's start retries the same recovery
            log.exception("could not mark the failed round as abandoned")

    async def _wait_connected(self, stop: asyncio.Event | None = None) -> bool:
        """Wait for the broker (warning periodically); False if ``stop`` is set first."""
        assert self._conn is not None
        while not (stop and stop.is_set()):
            try:
                await self._conn.wait_connected()
                return True
            except FedmqError as exc:
                log.warning("aggregator still waiting for the broker: %s", exc)
        return False

    def _resume_or_open(self) -> _OpenRound:
        assert self.store is not None and self.layout is not None
        last = self.store.last_round()
        now = time.time()
        if last is not None and last.status == "open":
            stored = self.store.latest_snapshot()
            if stored is not None and stored.round_id >= last.round_id:
                # Crashed after writing the snapshot but before marking the round: it did close.
                self.store.finish_round(last.round_id, "closed", last.contributors, "recovered")
            else:
                announce = RoundAnnounce(
                    self.config.federation,
                    last.round_id,
                    last.base_version,
                    PHASE_COLLECT,
                    last.opened_at,
                    last.deadline,
                    self.config.min_clients,
                    self.config.target_clients,
                    self._round_config(),
                )
                self._round = _OpenRound(sign(announce, self.key), WeightedMean(self.layout.dim))
                frames = self.store.frames(last.round_id)
                for topic, payload in frames:
                    self._ingest(topic, payload, replay=True)
                log.info(
                    "round=%d resumed from journal: %d frames, %d updates, %.1fs left",
                    last.round_id,
                    len(frames),
                    len(self._round.contributors),
                    last.deadline - now,
                )
                return self._round
        round_id = 0 if last is None else last.round_id + 1
        deadline = now + self.config.round_window_s
        self.store.open_round(round_id, self.version, now, deadline)
        announce = RoundAnnounce(
            self.config.federation,
            round_id,
            self.version,
            PHASE_COLLECT,
            now,
            deadline,
            self.config.min_clients,
            self.config.target_clients,
            self._round_config(),
        )
        self._round = _OpenRound(sign(announce, self.key), WeightedMean(self.layout.dim))
        log.info("round=%d opened on v%d, window %.1fs", round_id, self.version, self.config.round_window_s)
        return self._round

    def _round_config(self) -> dict[str, object]:
        return {"mode": "plain", "encoding": "f32"}

    async def _collect(self, opened: _OpenRound, stop: asyncio.Event | None) -> None:
        """Wait for the target count or the deadline, whichever is first (never longer)."""
        remaining = opened.announce.deadline - time.time()
        waiters = [asyncio.create_task(opened.full.wait())]
        if stop is not None:
            waiters.append(asyncio.create_task(stop.wait()))
        try:
            if remaining > 0 and not opened.full.is_set():
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _close(self, opened: _OpenRound) -> None:
        self._round = None  # late updates for this round are now "wrong round"
        count = len(opened.contributors)
        if count >= self.config.min_clients:
            metrics = {"total_weight": opened.accumulator.total_weight, **self._mean_metrics(opened)}
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
        snapshot = make_snapshot(
            self.config.federation,
            version,
            round_id,
            self.layout,
            new_weights,
            self.key,
            self.config.snapshot_encoding,
        )
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
        assert self.store is not None
        self.store.prune_journal(result.round_id - self.config.keep_journal_rounds)
        self.results.append(result)
        await self._publish(self.topics.result, encode(result), retain=True)
        for observer in self.observers:
            try:
                observer(result, self.weights)
            except Exception:
                log.exception("round observer failed")

    # -- secure rounds ---------------------------------------------------------------------------

    async def _secure_round(self, stop: asyncio.Event | None) -> bool:
        """One secure round; False when the privacy budget does not allow another round."""
        assert self.store is not None and self.layout is not None
        dp = self.config.dp
        z = self._noise_multiplier
        if dp.enabled and dp.budget_epsilon is not None and self.accountant is not None:
            assert z is not None
            if self.accountant.would_exceed(dp.budget_epsilon, z):
                log.warning(
                    "privacy budget: another round would take epsilon from %.3f past %.3f; stopping",
                    self.accountant.epsilon(), dp.budget_epsilon,
                )  # fmt: skip
                return False
        last = self.store.last_round()
        if last is not None and last.status == "open":
            stored = self.store.latest_snapshot()
            if stored is not None and stored.round_id >= last.round_id:
                self.store.finish_round(last.round_id, "closed", last.contributors, "recovered")
            else:
                await self._abandon(last.round_id, 0, "aggregator restarted during a secure round")
        round_id = 0 if last is None else last.round_id + 1
        windows = self.config.windows
        now = time.time()
        deadline = now + windows.total
        self.store.open_round(round_id, self.version, now, deadline)
        codec = dataclasses.replace(self.config.codec, seed=os.urandom(32))
        round_config: dict[str, object] = {
            "mode": "secure",
            "weight_cap": self.config.weight_cap,
            "windows": dataclasses.asdict(windows),
            "staleness": self.config.staleness.to_dict(),
        }
        blocks, scales = self._round_blocks(round_id)
        round_slices = [self.layout.slice_of_block(b) for b in blocks] if blocks else None
        round_dim = sum(s.stop - s.start for s in round_slices) if round_slices else self.layout.dim
        if blocks:
            round_config["blocks"] = blocks
        if dp.enabled:
            assert z is not None
            if dp.mode == "distributed":
                # Leave room in Z_2^b for the noise of the sum (dropout margin and credited shares).
                headroom = sum_noise_headroom(z, dp.dropout_margin, self.config.min_clients)
                codec = dataclasses.replace(codec, noise_multiplier=headroom)
            round_config["dp"] = dataclasses.replace(
                dp, noise_multiplier=z, target_epsilon=None, target_rounds=None, clip_norm=codec.clip_norm
            ).to_dict()
        round_config["codec"] = codec.to_dict()
        secure = SecureRound(
            self.config.federation,
            round_id,
            self.key,
            self.config.directory or {},
            codec,
            round_dim,
            windows,
            self.config.min_clients,
            self.config.target_clients,
            self.config.dropout_rate,
            self.config.corrupt_fraction,
            self.config.max_update_bytes,
            dp if dp.enabled else None,
            z,
            self.config.over_selection,
        )
        announce = RoundAnnounce(
            self.config.federation,
            round_id,
            self.version,
            PHASE_KEYS,
            now,
            deadline,
            self.config.min_clients,
            self.config.target_clients,
            round_config,
        )
        self._secure = self.last_secure = secure
        self.open_phase.clear()
        self._accepting.set()
        await self._publish_announce(sign(announce, self.key))
        log.info("round=%d opened (secure) on v%d", round_id, self.version)
        try:
            outcome = await secure.run(self._publish_roster, self._publish_notice, self._publish_inbox, stop)
        except FedmqError as exc:
            count = len(secure.server.masked) if secure.server is not None else len(secure.adverts)
            await self._abandon(round_id, count, str(exc))
            return True
        finally:
            self._secure = None
            self.open_phase.clear()
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
        mean = outcome.mean_delta
        if round_slices:
            # Partial training: the vector covered only this round's blocks; the rest did not move.
            mean = np.zeros(self.layout.dim, np.float32)
            offset = 0
            for name, part in zip(blocks or [], round_slices, strict=True):
                size = part.stop - part.start
                mean[part] = outcome.mean_delta[offset : offset + size]
                if self.config.rotation_step:
                    mean[part] *= np.float32(scales.get(name, 1.0))
                offset += size
            metrics["trained_fraction"] = round_dim / self.layout.dim
            if self.config.rotation_step and scales:
                metrics["rotation_scale"] = max(scales.get(name, 1.0) for name in blocks or [])
        await self._apply(round_id, mean, outcome.contributors, metrics)
        return True

    def _round_blocks(self, round_id: int) -> tuple[list[str] | None, dict[str, float]]:
        """The trainable blocks of a round under the smallest declared memory budget (None: all), and
        the rotation's per-block step scales (:func:`aggregator.blocks.rotation_scales`)."""
        if not self.config.partial_training or self.layout is None:
            return None, {}
        budgets = [b for b in self.memory_budgets.values() if b > 0]
        budget = min(budgets) if budgets else None
        blocks = self.layout.blocks()
        profiles = [p for p in self.activation_profiles.values() if len(p) == len(blocks)]
        # Devices run the same model; the largest declared figure per block is the safe one.
        profile = [max(column) for column in zip(*profiles, strict=True)] if profiles else None
        return choose_blocks(blocks, budget, round_id, profile), rotation_scales(blocks, budget, profile)

    async def _publish_roster(self, roster: Message) -> None:
        payload = encode(roster)
        topic = self.topics.roster
        await self.open_phase.publish("roster", lambda: self._publish(topic, payload, retain=True))

    async def _publish_notice(self, notice: Message) -> None:
        payload = encode(notice)
        topic = self.topics.notice
        await self.open_phase.publish("notice", lambda: self._publish(topic, payload, retain=True))

    async def _publish_inbox(self, device: str, batch: Message) -> None:
        await self.open_phase.publish(f"inbox/{device}", lambda: self._send_inbox(device, batch))

    async def _send_inbox(self, device: str, batch: Message) -> None:
        assert self._conn is not None
        try:
            await publish_framed(
                self._conn,
                self.topics.inbox(device),
                lambda i: self.topics.inbox_chunk(device, i),
                encode(batch),
                self.config.chunk_limit,
            )
        except FedmqError as exc:
            log.error("delivering shares to %s failed: %s", device, exc)

    @staticmethod
    def _mean_metrics(opened: _OpenRound) -> dict[str, float]:
        n = max(1, len(opened.contributors))
        return {k: v / n for k, v in opened.metrics.items()}

    # -- publishing ------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self._conn is not None
        try:
            await self._conn.publish(topic, payload, retain=retain)
        except FedmqError as exc:
            log.error("publish to %s failed: %s", topic, exc)

    async def _republish(self) -> None:
        """After a reconnect, re-assert the retained state: a broker that crashed may have lost it."""
        await guarded(self._republish_state(), where="aggregator: re-publishing after a reconnect")

    async def _republish_state(self) -> None:
        if self.version < 0 or self._conn is None or self._conn.stats.connects <= 1:
            return
        await self._publish_snapshot()
        if self._round is not None:
            await self._publish_announce(self._round.announce)
        if self._last_announce is not None and self._secure is not None:
            await self._publish_announce(self._last_announce)
            await self.open_phase.replay()

    async def _publish_snapshot(self) -> None:
        """The full snapshot (retained, for newcomers), then the update for holders of the last version."""
        assert self._conn is not None
        if self._delta_bytes:
            try:
                await publish_framed(
                    self._conn,
                    self.topics.delta,
                    self.topics.delta_chunk,
                    self._delta_bytes,
                    self.config.chunk_limit,
                    retain=True,
                )
            except FedmqError as exc:
                log.error("publishing the v%d delta failed: %s", self.version, exc)
        try:
            await publish_framed(
                self._conn,
                self.topics.model,
                self.topics.model_chunk,
                self._snapshot_bytes,
                self.config.chunk_limit,
                retain=True,
            )
        except FedmqError as exc:
            log.error("publishing snapshot v%d failed: %s", self.version, exc)

    async def _publish_announce(self, announce: RoundAnnounce) -> None:
        self._last_announce = announce
        remaining = max(1.0, announce.deadline - time.time())
        assert self._conn is not None
        try:
            await self._conn.publish(
                self.topics.round, encode(announce), retain=True, expiry_s=remaining + 60
            )
        except FedmqError as exc:
            log.error("announcing round %d failed: %s", announce.round_id, exc)

    # -- intake ----------------------------------------------------------------------------------

    async def _intake_loop(self) -> None:
        """Hand every incoming message to its handler; one message's failure never ends the loop."""
        assert self._conn is not None
        async for msg in self._conn.messages():
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
            topic = str(msg.topic)
            if topic.startswith(self.topics.status_all[:-1]):
                self._on_presence(topic, payload)
                continue
            await self._accepting.wait()
            self._ingest(topic, payload)

    def _on_presence(self, topic: str, payload: bytes) -> None:
        """Record a device's declared memory budget; never raises (bad input is dropped and counted)."""
        if not payload:
            return
        sender = topic
        try:
            sender = self.topics.parse_status(topic)
            presence = decode(payload, PresenceMsg)
            if presence.client_id != sender or not self.config.allows(sender):
                raise ProtocolError("presence for another or unknown device")
            self._record_presence(presence)
        except FedmqError as exc:
            self._drop(sender, str(exc), topic=topic, rule=rule_of(exc))
        except Exception as exc:  # the per-message fault boundary
            self._drop(sender, f"{type(exc).__name__}: {exc}", topic=topic, rule=INTERNAL_ERROR, exc=exc)

    def _record_presence(self, presence: PresenceMsg) -> None:
        if presence.online and presence.memory_budget > 0:
            self.memory_budgets[presence.client_id] = presence.memory_budget
            self.activation_profiles[presence.client_id] = list(presence.activation_profile)
        else:
            self.memory_budgets.pop(presence.client_id, None)
            self.activation_profiles.pop(presence.client_id, None)

    def _drop(
        self,
        who: str,
        reason: str,
        round_id: int | None = None,
        *,
        topic: str = "",
        rule: str = "ProtocolError",
        exc: BaseException | None = None,
    ) -> None:
        """Count and log one refused message (with the traceback when no rule anticipated it)."""
        self.faults.record(who, topic, rule, reason)
        log.warning("dropped message round=%s from=%s topic=%s rule=%s: %s", round_id, who, topic, rule,
                    reason, exc_info=exc if rule == INTERNAL_ERROR else None)  # fmt: skip

    def _ingest(self, topic: str, payload: bytes, replay: bool = False) -> None:
        """Validate, journal, then count one frame. Never raises: bad input is logged and dropped."""
        assert self.store is not None
        sender = topic
        round_id = None
        try:
            parsed = self.topics.parse_round(topic)
            sender, round_id = parsed.sender, parsed.round_id
            if parsed.kind in SecureRound.KINDS:
                self._ingest_secure(parsed, payload)
                return
            current = self._round
            if current is None or parsed.round_id != current.round_id:
                now = "none" if current is None else current.round_id
                raise ProtocolError(f"update for round {parsed.round_id}, current round is {now}")
            if parsed.kind != UPDATE:
                raise ProtocolError(f"unexpected message kind {parsed.kind!r} in plain mode")
            if not self.config.allows(sender):
                raise ProtocolError(f"unknown sender {sender!r}")
            if sender in current.contributors:
                log.debug("round=%d duplicate from %s ignored", current.round_id, sender)
                return
            if len(payload) > self.config.max_update_bytes:
                raise WireError(f"oversized payload: {len(payload)} bytes > {self.config.max_update_bytes}")
            key = f"{current.round_id}/{sender}"
            part = -1 if parsed.chunk is None else parsed.chunk
            if parsed.chunk is None:
                # Whole messages are fully validated before they are journaled.
                msg = current.reassembler.feed(key, None, payload, self.config.max_update_bytes)
                if msg is not None:
                    delta = self._validate(msg, parsed.round_id, sender, current)
                if not replay and not self.store.journal(
                    current.round_id, sender, UPDATE, part, topic, payload
                ):
                    return
            else:
                if not replay and not self.store.journal(
                    current.round_id, sender, UPDATE, part, topic, payload
                ):
                    return
                msg = current.reassembler.feed(key, parsed.chunk, payload, self.config.max_update_bytes)
                if msg is not None:
                    delta = self._validate(msg, parsed.round_id, sender, current)
            if msg is None:
                return  # a chunked transfer is still incomplete
            assert isinstance(msg, ModelUpdate)
            current.accumulator.add(delta, float(msg.num_examples))
            current.contributors.add(sender)
            for name, value in msg.metrics.items():
                current.metrics[name] = current.metrics.get(name, 0.0) + float(value)
            log.info(
                "round=%d accepted update from %s (%d/%d)",
                current.round_id,
                sender,
                len(current.contributors),
                self.config.target_clients,
            )
            if len(current.contributors) >= self.config.target_clients:
                current.full.set()
        except FedmqError as exc:
            self._drop(sender, str(exc), round_id, topic=topic, rule=rule_of(exc))
        except Exception as exc:  # the per-message fault boundary
            self._drop(sender, f"{type(exc).__name__}: {exc}", round_id, topic=topic, rule=INTERNAL_ERROR,
                       exc=exc)  # fmt: skip

    def _ingest_secure(self, parsed: RoundTopic, payload: bytes) -> None:
        secure = self._secure
        if secure is None or parsed.round_id != secure.round_id:
            now = "none" if secure is None else secure.round_id
            raise ProtocolError(f"{parsed.kind} for round {parsed.round_id}, current round is {now}")
        if not self.config.allows(parsed.sender):
            raise ProtocolError(f"unknown sender {parsed.sender!r}")
        if len(payload) > self.config.max_update_bytes:
            raise WireError(f"oversized payload: {len(payload)} bytes > {self.config.max_update_bytes}")
        secure.ingest(parsed, payload)

    def _validate(self, msg: object, round_id: int, sender: str, current: _OpenRound) -> np.ndarray:
        assert self.layout is not None
        if not isinstance(msg, ModelUpdate):
            raise WireError(f"expected an update message, got {type(msg).__name__}")
        if msg.round_id != round_id or msg.sender != sender:
            raise ProtocolError("message round/sender do not match its topic")
        if msg.base_version != current.announce.base_version:
            raise ProtocolError(
                f"update built on v{msg.base_version}, round is on v{current.announce.base_version}"
            )
        if msg.encoding != "f32" or msg.dim != self.layout.dim or len(msg.data) != 4 * self.layout.dim:
            raise WireError(f"update shape/encoding mismatch (dim {msg.dim}, {len(msg.data)} bytes)")
        delta = np.frombuffer(msg.data, dtype="<f4")
        if not np.isfinite(delta).all():
            raise WireError("update contains NaN or infinity")
        return delta
