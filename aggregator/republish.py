"""The open phase's messages, kept so the aggregator can publish them again after a reconnect.

A broker that restarts without having saved them loses the retained roster and notice and every share
batch queued for a device's inbox; a device that missed one cannot take the next step of the round. So
the engine publishes each of them through :class:`OpenPhase`, which remembers the latest per key (the
roster, each device's inbox, the notice -- U3 replaces U2) and, after a reconnect, publishes them again in
the order devices need them. Devices treat such a repeat as their cue to re-send whatever that phase still
lacks from them (``edge_client/delivery.py``), so one reconnect of either side restores the round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

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
        """Run every remembered step again (after a reconnect); returns how many ran."""
        steps = list(self._steps.values())
        for step in steps:
            await step()
        if steps:
            self.replays += 1
            log.info("re-published the open phase's %d messages after a reconnect", len(steps))
        return len(steps)
