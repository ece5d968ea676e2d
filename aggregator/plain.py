"""One plain-mode (trusted-aggregator) round's intake: validate, journal, count float32 updates.

The engine parses the topic and catches errors at its per-message boundary; this class applies the
round's rules to one frame and raises :class:`~shared.errors.FedmqError` on anything it refuses. Whole
messages are validated before they are journaled; chunks are journaled as they come and validated once
reassembled, so a restarted aggregator replays exactly what it had accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aggregator.accumulator import WeightedMean
from shared.chunking import Reassembler
from shared.clock import SYSTEM_CLOCK, Clock
from shared.errors import ProtocolError, WireError
from shared.topics import UPDATE, RoundTopic
from shared.wire import Message, ModelUpdate, RoundAnnounce

log = logging.getLogger(__name__)

#: Writes one frame durably; False when the frame was already journaled (a duplicate).
Journal = Callable[[RoundTopic, bytes], bool]


@dataclass
class PlainRound:
    announce: RoundAnnounce
    accumulator: WeightedMean
    max_bytes: int
    contributors: set[str] = field(default_factory=set)
    reassembler: Reassembler = field(default_factory=Reassembler)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: dict[str, float] = field(default_factory=dict)
    clock: Clock = SYSTEM_CLOCK
    #: When the window ends on the monotonic clock: a step of the wall clock mid-round moves nothing.
    closes_at: float = field(init=False)

    def __post_init__(self) -> None:
        window = self.announce.deadline - self.announce.opened_at
        left = min(window, max(0.0, self.announce.deadline - self.clock.time()))  # resumed: what is left
        self.closes_at = self.clock.monotonic() + left

    @property
    def round_id(self) -> int:
        return self.announce.round_id

    async def wait(self, stop: asyncio.Event | None) -> None:
        """Until the target count or the deadline, whichever is first (never longer), or ``stop``."""
        remaining = self.closes_at - self.clock.monotonic()
        waiters = [asyncio.create_task(self.full.wait())]
        if stop is not None:
            waiters.append(asyncio.create_task(stop.wait()))
        try:
            if remaining > 0 and not self.full.is_set():
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def mean_metrics(self) -> dict[str, float]:
        n = max(1, len(self.contributors))
        return {k: v / n for k, v in self.metrics.items()}

    def ingest(self, parsed: RoundTopic, payload: bytes, journal: Journal | None) -> None:
        """Count one frame (``journal`` None: replaying the journal); raises FedmqError on bad input."""
        if parsed.round_id != self.round_id:
            raise ProtocolError(f"update for round {parsed.round_id}, current round is {self.round_id}")
        if parsed.kind != UPDATE:
            raise ProtocolError(f"unexpected message kind {parsed.kind!r} in plain mode")
        sender = parsed.sender
        if sender in self.contributors:
            log.debug("round=%d duplicate from %s ignored", self.round_id, sender)
            return
        if len(payload) > self.max_bytes:
            raise WireError(f"oversized payload: {len(payload)} bytes > {self.max_bytes}")
        key = f"{self.round_id}/{sender}"
        delta = None
        if parsed.chunk is None:
            msg = self.reassembler.feed(key, None, payload, self.max_bytes)
            if msg is not None:
                delta = self._validate(msg, sender)
            if journal is not None and not journal(parsed, payload):
                return
        else:
            if journal is not None and not journal(parsed, payload):
                return
            msg = self.reassembler.feed(key, parsed.chunk, payload, self.max_bytes)
            if msg is not None:
                delta = self._validate(msg, sender)
        if msg is None or delta is None:
            return  # a chunked transfer is still incomplete
        assert isinstance(msg, ModelUpdate)
        self.accumulator.add(delta, float(msg.num_examples))
        self.contributors.add(sender)
        for name, value in msg.metrics.items():
            self.metrics[name] = self.metrics.get(name, 0.0) + float(value)
        log.info("round=%d accepted update from %s (%d/%d)", self.round_id, sender, len(self.contributors),
                 self.announce.target_clients)  # fmt: skip
        if len(self.contributors) >= self.announce.target_clients:
            self.full.set()

    def _validate(self, msg: Message, sender: str) -> np.ndarray:
        if not isinstance(msg, ModelUpdate):
            raise WireError(f"expected an update message, got {type(msg).__name__}")
        if msg.round_id != self.round_id or msg.sender != sender:
            raise ProtocolError("message round/sender do not match its topic")
        base = self.announce.base_version
        if msg.base_version != base:
            raise ProtocolError(f"update built on v{msg.base_version}, round is on v{base}")
        dim = self.accumulator.dim
        if msg.encoding != "f32" or msg.dim != dim or len(msg.data) != 4 * dim:
            raise WireError(f"update shape/encoding mismatch (dim {msg.dim}, {len(msg.data)} bytes)")
        delta = np.frombuffer(msg.data, dtype="<f4")
        if not np.isfinite(delta).all():
            raise WireError("update contains NaN or infinity")
        return delta
