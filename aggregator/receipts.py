"""Receipts for chunked uploads: the aggregator tells a device which chunks of its upload it holds.

A broker's PUBACK says nothing about what reached the aggregator: after a broker crash the device cannot
know which acknowledged chunks were lost, and used to send the whole message again. So the aggregator
confirms, end to end, on the device's inbox (:class:`shared.wire.ChunkReceipt`):

* every :data:`RECEIPT_EVERY` chunks newly held of a transfer (the device's resume point lags by less),
* when a manifest arrives and chunks are missing (they were lost: the device sends chunks before the
  manifest) -- the device re-sends just those,
* when a transfer completes (the device stops any re-send at once),
* and for every transfer under way after the aggregator's own reconnect.

Receipts are idempotent hints: a lost one only costs a device some re-sent bytes, a late one is
superseded. State is bounded (one counter per open transfer, pruned with the transfer).
"""

from __future__ import annotations

from shared.chunking import Reassembler
from shared.topics import UPDATE
from shared.wire import ChunkReceipt

#: A receipt every this many chunks newly held of one transfer.
RECEIPT_EVERY = 8
_MAX_TRACKED = 4096


def receipt_of(key: str, transfer_id: bytes, state: tuple[frozenset[int], bool, bool]) -> ChunkReceipt | None:
    """The receipt for a reassembly ``key`` (``round/sender`` in plain rounds, ``round/kind/sender`` in
    secure ones) and transfer, from :meth:`Reassembler.holding`'s state."""
    parts = key.split("/")
    if len(parts) == 2:
        round_text, kind, sender = parts[0], UPDATE, parts[1]
    elif len(parts) == 3:
        round_text, kind, sender = parts
    else:
        return None
    held, manifest, complete = state
    bitmap = b"" if complete else ChunkReceipt.bitmap(held)
    return ChunkReceipt(int(round_text), kind, sender, transfer_id, bitmap, manifest, complete)


class Receipts:
    """Decides when a frame just fed to a reassembler deserves a receipt."""

    def __init__(self, every: int = RECEIPT_EVERY) -> None:
        self.every = every
        self._acked: dict[tuple[str, bytes], int] = {}  # chunks held when the last receipt went out
        self.sent = 0

    def after_frame(self, reassembler: Reassembler) -> ChunkReceipt | None:
        """The receipt due after the frame just fed (``reassembler.last``), if any."""
        ident, reassembler.last = reassembler.last, None
        if ident is None:
            return None
        state = reassembler.holding(*ident)
        if state is None:
            self._acked.pop(ident, None)
            return None
        held, manifest, complete = state
        previous = self._acked.get(ident, 0)
        if complete:
            if previous < 0:
                return None  # completion already confirmed
            self._acked[ident] = -1
        elif (manifest and reassembler.last_was_manifest) or len(held) - previous >= self.every:
            self._acked[ident] = len(held)
        else:
            return None
        if len(self._acked) > _MAX_TRACKED:
            for old in list(self._acked)[: _MAX_TRACKED // 2]:
                del self._acked[old]
        self.sent += 1
        return receipt_of(*ident, state)

    def open_transfers(self, reassembler: Reassembler) -> list[ChunkReceipt]:
        """A receipt for every transfer under way (after a reconnect: the broker may have lost some)."""
        found = []
        for ident in reassembler.partial():
            state = reassembler.holding(*ident)
            receipt = receipt_of(*ident, state) if state is not None else None
            if receipt is not None:
                found.append(receipt)
        self.sent += len(found)
        return found
