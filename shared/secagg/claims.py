"""Masked inputs verified and summed outside the server: summing workers (``aggregator/summing.py``).

The server keeps the one count that decides U3 (``_masked_from``) and the running modular sum
(``_sum``); a worker that verified an input *claims* its device here, so each device counts once and
only while the masked phase is open, whichever process (or the server itself) saw the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shared.wire.secagg import MaskedInput

if TYPE_CHECKING:
    from shared.secagg.exclusion import Exclusion


class MaskedClaims:
    """Part of :class:`shared.secagg.SecAggServer`: inputs counted here, summed elsewhere."""

    phase: str
    shared: frozenset[str]
    graph: dict[str, tuple[str, ...]]
    exclusion: Exclusion
    _masked_from: set[str]
    _sum: np.ndarray

    def claim_masked(self, device: str, kept: MaskedInput | None = None) -> bool:
        """Count an input verified and summed elsewhere, once: False when it is a duplicate, from
        outside U2, or the masked phase is closed. ``kept`` (its payload and refusal report) is what
        :meth:`add_masked` would keep, so the dealer exclusion works the same (``exclusion.py``)."""
        if self.phase != "mask" or device not in self.shared or device in self._masked_from:
            return False
        if kept is not None:
            self.exclusion.note_masked(kept, self.graph[device])
        self._masked_from.add(device)
        return True

    def release_masked(self, devices: frozenset[str]) -> None:
        """Un-count claimed inputs whose partial sum was lost (a worker died): they become dropouts."""
        if self.phase == "mask":
            self._masked_from.difference_update(devices)

    def add_partial_sum(self, partial: np.ndarray) -> None:
        """Add a worker's partial sum (modulo 2^32) of the inputs it claimed."""
        np.add(self._sum, partial.astype(np.uint32, copy=False), out=self._sum)
