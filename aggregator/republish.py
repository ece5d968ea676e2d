"""The open phase's messages, kept so the aggregator can publish them again after a reconnect.

A broker that restarts without having saved them loses the retained roster and notice and every share
batch queued for a device's inbox; a device that missed one cannot take the next step of the round. So
the engine publishes them through :class:`RecordingOutbox`, whose :class:`OpenPhase` remembers the
latest per key (the roster, each device's inbox, the notice -- U3 replaces U2) and, after a reconnect,
publishes them again in the order devices need them. Devices treat such a repeat as their cue to re-send
whatever that phase still lacks from them (``edge_client/delivery.py``), so one reconnect of either side
restores the round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from shared.errors import FedmqError
from shared.outbox import Outbox, Publisher
from shared.topics import Topics
from shared.wire import RoundAnnounce
from shared.wire.roster import CompactRoster, NeighbourKeys
from shared.wire.secagg import Roster, ShareBatch, SurvivorList
from shared.wire.seeds import SeedRequest

log = logging.getLogger(__name__)

Publish = Callable[[], Awaitable[None]]


class OpenPhase:
    """Publishers of the open round's messages, replayable in first-published order."""

    def __init__(self) -> None:
        self._steps: dict[str, Publish] = {}
        self.replays = 0

    def __len__(self) -> int:
        return len(self._steps)

    def clear(self) -> None:
        """The round ended: nothing of it is worth publishing again."""
        self._steps.clear()

    async def publish(self, key: str, step: Publish) -> None:
        """Remember ``step`` under ``key`` (a later one replaces it, keeping its place), then run it."""
        self._steps[key] = step
        await step()

    async def replay(self) -> int:
        """Run every remembered step again (after a reconnect); returns how many ran. A step that fails is
        logged and the rest still go out (the next reconnect replays them all again)."""
        steps = list(self._steps.values())
        for step in steps:
            try:
                await step()
            except FedmqError as exc:
                log.error("re-publishing the open phase: %s", exc)
        if steps:
            self.replays += 1
            log.info("re-published the open phase's %d messages after a reconnect", len(steps))
        return len(steps)

    async def replay_for(self, device: str) -> None:
        """Run again the steps addressed to ``device`` alone (its share batch, its neighbours' keys).

        Why: those go to the device's inbox, which is not retained. A broker that crashed without saving
        forgot the device's session, so what the aggregator published for it before it re-subscribed went
        nowhere -- and a device without its share batch cannot reveal its neighbours' shares at unmask, so
        an honest neighbour is blamed (``secagg-bundles-refused``) and quarantined. The aggregator calls
        this when the device announces itself online, which it does only once it has subscribed again.
        """
        steps = [step for key, step in self._steps.items() if key.split("/", 1)[-1] == device]
        for step in steps:
            try:
                await step()
            except FedmqError as exc:
                log.error("re-publishing %s's part of the open phase: %s", device, exc)
        if steps:
            log.info("re-published %s's %d open-phase messages: it came back online", device, len(steps))


class RecordingOutbox(Outbox):
    """The aggregator's outbox: publishes as :class:`shared.outbox.Outbox` does, and remembers the open
    secure round's roster, inbox batches and notice in :attr:`open_phase` for :meth:`OpenPhase.replay`."""

    def __init__(self, transport: Publisher, topics: Topics, *, chunk_limit: int) -> None:
        super().__init__(transport, topics, chunk_limit=chunk_limit)
        self.open_phase = OpenPhase()
        self._round = -1

    def _of_round(self, round_id: int) -> None:
        """A message of another round: the one recorded is over, forget it."""
        if round_id != self._round:
            self.open_phase.clear()
            self._round = round_id

    async def announce(self, announce: RoundAnnounce, *, now: float) -> None:
        self._of_round(announce.round_id)
        await super().announce(announce, now=now)

    async def roster(self, roster: Roster | CompactRoster) -> None:
        self._of_round(roster.round)
        await self.open_phase.publish("roster", lambda: super(RecordingOutbox, self).roster(roster))

    async def notice(self, notice: SurvivorList | SeedRequest) -> None:
        self._of_round(notice.round)
        await self.open_phase.publish("notice", lambda: super(RecordingOutbox, self).notice(notice))

    async def inbox(self, device: str, batch: ShareBatch | NeighbourKeys) -> None:
        kind = "inbox" if isinstance(batch, ShareBatch) else "neighbours"  # the share batch keeps the keys
        await self.open_phase.publish(
            f"{kind}/{device}", lambda: super(RecordingOutbox, self).inbox(device, batch)
        )
