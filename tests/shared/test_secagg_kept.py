"""A round's kept masked inputs come back bit-exactly, from memory or from the spill file."""

from __future__ import annotations

import os

from shared.secagg.kept import KeptInputs
from shared.wire.secagg import MaskedInput


def masked(device: str, size: int) -> MaskedInput:
    return MaskedInput("fed", 3, device, os.urandom(size), 16, size // 2, bytes(64), refused=["x"])


def test_payloads_round_trip_in_memory_and_after_spilling():
    kept = KeptInputs(spool_bytes=1000)  # the second input spills the file to disk
    first, second, third = masked("a", 600), masked("b", 600), masked("c", 10)
    for message in (first, second, third):
        kept.add(message)
    assert kept._file is not None and kept._file._rolled  # beyond the spool size: on disk, not in memory
    assert [kept[d] for d in ("a", "b", "c")] == [first, second, third]  # headers and payloads intact
    assert "b" in kept and "z" not in kept and len(kept) == 3
    kept.clear()
    assert len(kept) == 0 and "a" not in kept and kept._file is None


def test_a_device_kept_again_reads_its_latest_payload():
    kept = KeptInputs(spool_bytes=64)
    kept.add(masked("a", 100))
    again = masked("a", 40)
    kept.add(again)
    assert kept["a"] == again
