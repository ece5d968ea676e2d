"""Per-sender rate limits, checked before a message is decoded.

Decoding is bounded per message (``shared.wire.base``), but a device may send as many messages as the
broker lets it; without a limit one device could keep the aggregator's event loop busy decoding its
garbage. :class:`SenderLimits` gives every sender two token buckets, one counting messages and one
counting payload bytes; a message that finds either empty is dropped before decoding (and counted by the
caller as an offence). Honest devices send a handful of messages per round (one per phase, plus the
chunks of their masked input), far below the default budgets. The number of senders tracked is capped
(the least recently seen is forgotten), so memory is bounded whatever the topic names.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from shared.errors import ProtocolError


class RateLimited(ProtocolError):
    """A sender exceeded its message or byte budget; its message was dropped before decoding."""


@dataclass
class _Buckets:
    messages: float
    bytes: float
    updated: float


class SenderLimits:
    """Token buckets per sender: ``burst_*`` tokens, refilled at ``*_per_s``."""

    def __init__(
        self,
        *,
        messages_per_s: float = 50.0,
        burst_messages: float = 1000.0,
        bytes_per_s: float = 4 * 1024 * 1024,
        burst_bytes: float = 32 * 1024 * 1024,
        max_senders: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.messages_per_s = messages_per_s
        self.burst_messages = burst_messages
        self.bytes_per_s = bytes_per_s
        self.burst_bytes = burst_bytes
        self.max_senders = max_senders
        self._clock = clock
        self._senders: OrderedDict[str, _Buckets] = OrderedDict()

    def check(self, sender: str, size: int) -> None:
        """Spend one message and ``size`` bytes of ``sender``'s budget; :class:`RateLimited` if short."""
        now = self._clock()
        buckets = self._senders.get(sender)
        if buckets is None:
            buckets = self._senders[sender] = _Buckets(self.burst_messages, self.burst_bytes, now)
            if len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
        else:
            self._senders.move_to_end(sender)
            elapsed = max(0.0, now - buckets.updated)
            buckets.messages = min(self.burst_messages, buckets.messages + elapsed * self.messages_per_s)
            buckets.bytes = min(self.burst_bytes, buckets.bytes + elapsed * self.bytes_per_s)
            buckets.updated = now
        if buckets.messages < 1.0 or buckets.bytes < size:
            raise RateLimited(
                f"{sender!r} is over its rate limit ({self.messages_per_s:g} messages/s, "
                f"{self.bytes_per_s / 1e6:.1f} MB/s): message dropped before decoding"
            )
        buckets.messages -= 1.0
        buckets.bytes -= size
