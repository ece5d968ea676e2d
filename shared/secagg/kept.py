"""The masked inputs a round keeps so an excluded dealer's can be taken back out of the running sum.

Keeping them in memory would make the aggregator O(n·d) in a round (300 devices at d = 10^5 held 60 MB
more than the streamed sum). Payloads therefore go to a spooled temporary file: in memory up to
:data:`SPOOL_BYTES`, on disk beyond, and gone when the round's exclusions are decided (``clear``). Only
an excluded dealer's payload is ever read back.
"""

from __future__ import annotations

import dataclasses
import tempfile

from shared.wire.secagg import MaskedInput

#: Payload bytes a round keeps in memory before spilling the rest to a temporary file.
SPOOL_BYTES = 16 * 1024 * 1024


class KeptInputs:
    """``device -> MaskedInput`` whose payloads live in a spooled temporary file (append-only)."""

    def __init__(self, spool_bytes: int = SPOOL_BYTES) -> None:
        self._spool_bytes = spool_bytes
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = None
        self._index: dict[str, tuple[MaskedInput, int, int]] = {}  # header, offset, length
        self._end = 0

    def add(self, message: MaskedInput) -> None:
        if self._file is None:
            # closed by clear() when the round's exclusions are decided, not by a with-block
            self._file = tempfile.SpooledTemporaryFile(max_size=self._spool_bytes, prefix="fedmq-kept-")  # noqa: SIM115
        self._file.seek(self._end)
        self._file.write(message.payload)
        header = dataclasses.replace(message, payload=b"")
        self._index[message.device] = (header, self._end, len(message.payload))
        self._end += len(message.payload)

    def __contains__(self, device: object) -> bool:
        return device in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, device: str) -> MaskedInput:
        header, offset, length = self._index[device]
        assert self._file is not None
        self._file.seek(offset)
        return dataclasses.replace(header, payload=self._file.read(length))

    def clear(self) -> None:
        self._index.clear()
        self._end = 0
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["SPOOL_BYTES", "KeptInputs"]
