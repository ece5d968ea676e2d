"""The aggregator's retained state on the broker: snapshot, delta, announcement, and their re-assertion.

Everything goes out through the :class:`shared.outbox.Outbox`; a failed publish is logged, not raised: the
retained state is re-published after every reconnect, and a device that misses a message catches up from
the retained copy.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from aggregator.plain import PlainRound
from aggregator.receipts import Receipts
from aggregator.republish import RecordingOutbox
from aggregator.secure import SecureRound
from shared.chunking import Reassembler
from shared.clock import SYSTEM_CLOCK, Clock
from shared.errors import FedmqError
from shared.mqtt import MqttConnection
from shared.outbox import Outbox
from shared.supervision import guarded
from shared.wire import RoundAnnounce

log = logging.getLogger("aggregator.engine")


class Publishing:
    """Publishing side of :class:`aggregator.engine.Aggregator` (which owns the state named here)."""

    version: int
    _conn: MqttConnection | None
    _outbox: Outbox | None
    _snapshot_bytes: bytes
    _delta_bytes: bytes
    _round: PlainRound | None
    _secure: SecureRound | None
    _last_announce: RoundAnnounce | None

    #: Wall clock for stamps, monotonic for windows; tests give an aggregator a skewed or jumping one.
    clock: Clock = SYSTEM_CLOCK

    @property
    def receipts(self) -> Receipts:
        raise NotImplementedError

    def open_reassembler(self) -> Reassembler | None:
        raise NotImplementedError

    @staticmethod
    async def _logged(publishing: Awaitable[None], what: str) -> None:
        """Publish; a failure is logged (the retained state is re-asserted after a reconnect)."""
        try:
            await publishing
        except FedmqError as exc:
            log.error("%s failed: %s", what, exc)

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
            if isinstance(self._outbox, RecordingOutbox):  # the open phase's roster, inboxes, notice
                await self._outbox.open_phase.replay()
        reassembler = self.open_reassembler()
        if reassembler is not None and self._outbox is not None:  # what it holds of uploads under way
            for receipt in self.receipts.open_transfers(reassembler):
                await self._logged(self._outbox.receipt(receipt), f"receipt to {receipt.sender}")

    async def _publish_snapshot(self) -> None:
        """The full snapshot (retained, for newcomers), then the update for holders of the last version."""
        assert self._outbox is not None
        if self._delta_bytes:
            await self._logged(self._outbox.delta(self._delta_bytes), f"publishing the v{self.version} delta")
        await self._logged(
            self._outbox.snapshot(self._snapshot_bytes), f"publishing snapshot v{self.version}"
        )

    async def _publish_announce(self, announce: RoundAnnounce) -> None:
        assert self._outbox is not None
        self._last_announce = announce
        now = self._stamp_now(announce)
        await self._logged(self._outbox.announce(announce, now=now), f"announcing round {announce.round_id}")

    def _stamp_now(self, announce: RoundAnnounce) -> float:
        """Now, on the clock that stamped ``announce``: its ``opened_at`` plus the monotonic time since it was
        first published, so a re-publish after a wall-clock step keeps the retained copy's lifetime."""
        first: dict[tuple[int, float], float] = self.__dict__.setdefault("_announced_at", {})
        key = (announce.round_id, announce.opened_at)
        if key not in first:
            for old in [k for k in first if k[0] < announce.round_id - 4]:
                del first[old]
            first[key] = self.clock.monotonic()
        return announce.opened_at + (self.clock.monotonic() - first[key])
