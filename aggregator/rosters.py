"""Publishing a secure round's roster in its compact form: O(k) keys per device, not O(cohort).

The aggregator keeps the full signed roster (every member's keys) for itself, publishes the signed
:class:`~shared.wire.roster.CompactRoster` (ids and advert digests, ~27 B a member) retained on the
roster topic, and sends each member the signed adverts of exactly its neighbours in its inbox
(:class:`~shared.wire.roster.NeighbourKeys`, ~230 B a neighbour). Both go through the recording outbox, so
a reconnect re-publishes them (``aggregator/republish.py``); the device joins them in either order
(``shared.secagg.roster.RosterJoin``). Why this is as safe as the full roster: docs/security.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping

import nacl.signing

from shared.errors import FedmqError
from shared.outbox import Outbox
from shared.secagg.roster import compact, neighbour_keys
from shared.wire.secagg import Roster

log = logging.getLogger(__name__)


async def _logged(publishing: Awaitable[None], what: str) -> None:
    """Publish; a failure is logged, not raised (a device that misses its keys drops out of the round)."""
    try:
        await publishing
    except FedmqError as exc:
        log.error("%s failed: %s", what, exc)


async def publish_compact_roster(
    outbox: Outbox,
    roster: Roster,
    graph: Mapping[str, tuple[str, ...]],
    identity: nacl.signing.SigningKey,
) -> None:
    """The compact roster (retained), then every member's neighbour keys, all in flight at once."""
    await _logged(outbox.roster(compact(roster, identity)), "publishing the roster")
    await asyncio.gather(*(
        _logged(outbox.inbox(device, neighbour_keys(roster, graph[device], device)),
                f"sending {device} its neighbours' keys")
        for device in roster.member_ids
    ))  # fmt: skip
