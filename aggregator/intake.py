"""The aggregator's intake: every incoming message goes through one fault boundary to its handler.

Presence messages record a device's declared memory budget and activation profile; round messages go to
the open plain round (:class:`aggregator.plain.PlainRound`) or secure round
(:class:`aggregator.secure.SecureRound`). Bad input is counted and logged with its rule, never raised.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine

import nacl.signing

from aggregator.config import AggregatorConfig
from aggregator.hunt import Hunt
from aggregator.plain import PlainRound
from aggregator.receipts import Receipts
from aggregator.republish import RecordingOutbox
from aggregator.retained import RetainedGuard
from aggregator.secure import SecureRound
from aggregator.store import Store
from aggregator.summing import SummingPool
from shared.chunking import Reassembler
from shared.errors import FedmqError, LateMessage, ProtocolError, WireError
from shared.mqtt import MqttConnection
from shared.offences import Offences
from shared.outbox import Outbox
from shared.plan import RoundPlan
from shared.quarantine import Quarantine
from shared.ratelimit import SenderLimits
from shared.supervision import INTERNAL_ERROR, FaultCounter, Supervisor, guarded, rule_of
from shared.topics import UPDATE, RoundTopic, Topics
from shared.wire import Presence as PresenceMsg
from shared.wire import decode

log = logging.getLogger("aggregator.engine")

#: A device's open-phase inbox is re-published on its live "online" presence at most this often.
REPLAY_SPACING_S = 2.0


class Intake:
    """Message handling of :class:`aggregator.engine.Aggregator` (which owns the state named here)."""

    config: AggregatorConfig
    topics: Topics
    faults: FaultCounter
    memory_budgets: dict[str, int]
    activation_profiles: dict[str, list[int]]
    _conn: MqttConnection | None
    _outbox: Outbox | None
    _accepting: asyncio.Event
    _round: PlainRound | None
    _secure: SecureRound | None
    key: nacl.signing.SigningKey
    supervisor: Supervisor
    #: Summing worker processes (``config.summing_workers``, ``aggregator/summing.py``), if any.
    summing: SummingPool | None = None

    @functools.cached_property
    def offences(self) -> Offences:
        """Who broke which rule, counted per sender; one log line per sender and rule per interval.
        Quarantines (``shared.quarantine``) survive restarts in the store."""
        quarantine = Quarantine(policy=self.config.quarantine)
        quarantine.load(self.config.store_dir)
        return Offences(logger=log, quarantine=quarantine)

    @functools.cached_property
    def hunt(self) -> Hunt | None:
        """Finds the device behind refused aggregates across rounds (``aggregator.hunt``)."""
        return Hunt(tolerated=self.config.hunt_tolerated) if self.config.hunt_tolerated else None

    def _open_secure(self, round_id: int, plan: RoundPlan, dim: int) -> SecureRound:
        """A secure round, with the engine's offences and hunt, after a quarantine review."""
        self._review_quarantine()
        return SecureRound(self.config, round_id, self.key, plan, dim, offences=self.offences, hunt=self.hunt,
                           summing=self.summing)  # fmt: skip

    def _review_quarantine(self) -> None:
        """Before each secure round: apply operator lift requests (``fedmq quarantine lift``) and write
        the state (as of the last round) where ``fedmq quarantine`` reads it. A full disk costs the file,
        not the round."""
        quarantine = self.offences.quarantine
        try:
            for device in quarantine.apply_lift_requests(self.config.store_dir):
                if self.hunt is not None:
                    self.hunt.forget(device)
            quarantine.save(self.config.store_dir)
        except OSError as exc:
            log.error("quarantine state in %s not updated: %s", self.config.store_dir, exc)

    @functools.cached_property
    def retained(self) -> RetainedGuard:
        """Drops and clears retained messages on device round topics (``aggregator.retained``)."""
        return RetainedGuard(self.topics, self.offences)

    @functools.cached_property
    def limits(self) -> SenderLimits:
        """Per-sender budgets spent before decoding: two of the largest updates, then one every 4 s."""
        biggest = self.config.max_update_bytes
        return SenderLimits(burst_bytes=2 * biggest + 1024 * 1024, bytes_per_s=biggest / 4)

    def store_or_fail(self) -> Store:
        raise NotImplementedError

    def _subscriptions(self) -> list[str]:
        """Round messages and presence; summing workers, when configured, take the masked inputs."""
        workers = self.config.summing_workers
        rounds = self.topics.rounds_but_masked() if workers else [self.topics.rounds_all]
        return [*rounds, self.topics.status_all]

    def _start_summing(self) -> None:
        """Start the summing workers, if configured, as the supervised task ``summing``."""
        if self.config.summing_workers:
            pool = SummingPool(self.config, relay=self._ingest, refused=self._worker_refused)
            self.summing = pool
            self.supervisor.start("summing", lambda: pool.run(self.supervisor))

    @property
    def intake_hooks(self) -> list[Callable[[str, bytes], None]]:
        """Called with (topic, payload) of every incoming message (participation ledger, metrics)."""
        return self.__dict__.setdefault("_intake_hooks", [])

    async def _intake_loop(self) -> None:
        """Hand every incoming message to its handler; one message's failure never ends the loop."""
        assert self._conn is not None
        async for msg in self._conn.messages():
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload or b"")
            topic = str(msg.topic)
            for hook in self.intake_hooks:
                try:
                    hook(topic, payload)
                except Exception:  # an observer's fault never costs a message
                    log.exception("intake hook failed")
            if topic.startswith(self.topics.status_all[:-1]):
                self._on_presence(topic, payload, live=not msg.retain)
                continue
            if self.retained.intercept(self._conn, topic, bool(msg.retain), payload):
                continue
            await self._accepting.wait()
            self._ingest(topic, payload)
            self._receipt_due()

    @functools.cached_property
    def receipts(self) -> Receipts:
        """When a device's chunked upload deserves a receipt (``aggregator.receipts``)."""
        return Receipts()

    def open_reassembler(self) -> Reassembler | None:
        """The open round's chunked uploads under way."""
        if self._round is not None:
            return self._round.reassembler
        # SecureRound's own reassembler (read here rather than grow that module past its size limit).
        return self._secure._reassembler if self._secure is not None else None

    def _receipt_due(self) -> None:
        """Send a receipt for the upload the last frame belonged to, if one is due (never blocks intake)."""
        reassembler = self.open_reassembler()
        receipt = self.receipts.after_frame(reassembler) if reassembler is not None else None
        if receipt is None or self._outbox is None:
            return
        self._background(self._outbox.receipt(receipt), where="aggregator: chunk receipt")

    @functools.cached_property
    def background_tasks(self) -> set[asyncio.Task[None]]:
        """Publishes intake started without waiting for them (receipts, inbox replays), held until done."""
        return set()

    def _background(self, publish: Coroutine[object, object, None], *, where: str) -> None:
        """Run ``publish`` beside the intake (never blocks it); a failure is logged with ``where``."""
        task = asyncio.create_task(guarded(publish, where=where))
        self.background_tasks.add(task)
        task.add_done_callback(self.background_tasks.discard)

    def _on_presence(self, topic: str, payload: bytes, *, live: bool = False) -> None:
        """Record a device's declared memory budget; never raises (bad input is dropped and counted).
        ``live``: published just now (not a retained copy), i.e. the device has just (re)connected."""
        if not payload:
            return
        sender = topic
        try:
            sender = self.topics.parse_status(topic)
            presence = decode(payload, PresenceMsg)
            if presence.client_id != sender or not self.config.allows(sender):
                raise ProtocolError("presence for another or unknown device")
            self._record_presence(presence)
            if live and presence.online:
                self._replay_inbox(sender)
        except FedmqError as exc:
            self._drop(sender, str(exc), topic=topic, rule=rule_of(exc))
        except Exception as exc:  # the per-message fault boundary
            self._drop(sender, f"{type(exc).__name__}: {exc}", topic=topic, rule=INTERNAL_ERROR, exc=exc)

    def _replay_inbox(self, device: str) -> None:
        """A device came back online: its inbox messages of the open secure phase go out again
        (:meth:`aggregator.republish.OpenPhase.replay_for`); never blocks intake.

        At most once per :data:`REPLAY_SPACING_S` per device: presence is not rate-limited like round
        messages, and a device announcing itself online in a loop must not turn each few bytes of
        presence into a re-published share batch."""
        outbox = self._outbox
        if not isinstance(outbox, RecordingOutbox):
            return
        now = time.monotonic()
        if now - self.inbox_replayed_at.get(device, -REPLAY_SPACING_S) < REPLAY_SPACING_S:
            log.debug("device=%s online again within %.0f s: its inbox was just re-published", device,
                      REPLAY_SPACING_S)  # fmt: skip
            return
        self.inbox_replayed_at[device] = now
        replay = outbox.open_phase.replay_for(device)
        self._background(replay, where=f"aggregator: re-publishing {device}'s inbox")

    @functools.cached_property
    def inbox_replayed_at(self) -> dict[str, float]:
        """When each device's inbox was last re-published on its presence (monotonic; one per device)."""
        return {}

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
        """Count one refused message and log it, at most once per sender and rule per interval
        (``Aggregator.offences``), with the traceback when no rule anticipated it."""
        self.faults.record(who, topic, rule, reason)
        if rule == LateMessage.__name__:  # an honest device's re-send: refused, counted, no offence
            log.debug("late message from=%s round=%s topic=%s: %s", who, round_id, topic, reason)
            return
        self.offences.record(who, rule, reason, context=f"round={round_id} topic={topic}",
                             exc_info=exc if rule == INTERNAL_ERROR else None)  # fmt: skip

    def _worker_refused(self, sender: str, rule: str, reason: str, round_id: int | None) -> None:
        """A summing worker's refusal, counted and logged as the aggregator's own."""
        self._drop(sender, reason, round_id, topic=f"summing worker: {sender}", rule=rule)

    def _ingest(self, topic: str, payload: bytes, replay: bool = False) -> None:
        """Validate, journal, then count one frame. Never raises: bad input is logged and dropped."""
        sender = topic
        round_id = None
        try:
            parsed = self.topics.parse_round(topic)
            sender, round_id = parsed.sender, parsed.round_id
            if not replay:
                self.limits.check(sender, len(payload))
            if parsed.kind in SecureRound.KINDS:
                self._ingest_secure(parsed, payload)
                return
            current = self._round
            if current is None or parsed.round_id != current.round_id:
                raise self._wrong_round(UPDATE, parsed.round_id, getattr(current, "round_id", None))
            if parsed.kind != UPDATE:
                raise ProtocolError(f"unexpected message kind {parsed.kind!r} in plain mode")
            if not self.config.allows(sender):
                raise ProtocolError(f"unknown sender {sender!r}")
            journal = None if replay else (lambda p, frame: self._journal(p, topic, frame))
            current.ingest(parsed, payload, journal)
        except FedmqError as exc:
            self._drop(sender, str(exc), round_id, topic=topic, rule=rule_of(exc))
        except Exception as exc:  # the per-message fault boundary
            self._drop(sender, f"{type(exc).__name__}: {exc}", round_id, topic=topic, rule=INTERNAL_ERROR,
                       exc=exc)  # fmt: skip

    def _wrong_round(self, kind: str, round_id: int, current: int | None) -> ProtocolError:
        """The error for a ``kind`` message of a round that is not open: :class:`LateMessage` for one that
        was (a device's re-send after a reconnect: counted, not an offence), else a ProtocolError."""
        newest = current
        if newest is None:
            last = self.store_or_fail().last_round()
            newest = None if last is None else last.round_id + 1
        late = newest is not None and round_id < newest
        opened = "none" if current is None else current
        error = LateMessage if late else ProtocolError
        return error(f"{kind} for round {round_id}, current round is {opened}")

    def _journal(self, parsed: RoundTopic, topic: str, payload: bytes) -> bool:
        part = -1 if parsed.chunk is None else parsed.chunk
        return self.store_or_fail().journal(parsed.round_id, parsed.sender, UPDATE, part, topic, payload)

    def _ingest_secure(self, parsed: RoundTopic, payload: bytes) -> None:
        secure = self._secure
        if secure is None or parsed.round_id != secure.round_id:
            raise self._wrong_round(parsed.kind, parsed.round_id, getattr(secure, "round_id", None))
        if not self.config.allows(parsed.sender):
            raise ProtocolError(f"unknown sender {parsed.sender!r}")
        if len(payload) > self.config.max_update_bytes:
            raise WireError(f"oversized payload: {len(payload)} bytes > {self.config.max_update_bytes}")
        secure.ingest(parsed, payload)
